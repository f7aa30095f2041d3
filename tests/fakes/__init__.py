"""Local fakes of services tests cannot reach (Meta's Graph API)."""
