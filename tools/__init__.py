"""Project tools that drive the entry scripts: the offline demo, every preset at once, NegLabel's released words,
the README layout."""
