"""Made on the host, sent to a board: fragment blobs, training programs, local-data images."""
