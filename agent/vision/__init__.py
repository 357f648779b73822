"""Camera sources with reconnect, preprocessing, postprocessing plugins, the pipeline and its metrics."""
