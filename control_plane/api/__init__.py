"""The HTTP layer: thin handlers over the data layer and services, one module per resource."""
