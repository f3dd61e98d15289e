"""portalctl: operations on the running portal through each service's ops API."""
