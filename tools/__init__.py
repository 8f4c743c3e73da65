"""Project tools that drive the entry scripts: the offline demo, the README layout."""
