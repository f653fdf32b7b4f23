"""The read side, below the facade: the opened index (`reader.Reader`: connection, models,
networks, images, caches), guarded SQL, the property search language, export, and what is read
back from stored categories, maps, comparisons and pictures of a unit."""
