"""A local stand-in of the Panoptes API for tests, staging and the demo (``etchacell sandbox serve``)."""
