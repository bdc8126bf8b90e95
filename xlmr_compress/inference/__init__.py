"""Text in, predictions out: the pipeline, batch prediction over files, and an HTTP server."""
