"""One demo module per lifecycle (see labpipe.deployments.demo)."""
