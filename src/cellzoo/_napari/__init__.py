"""napari front end: manifest, thin widgets, reader, writer, sample data. The only place that imports Qt/napari."""
