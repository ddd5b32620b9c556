"""Reading and writing images and label images from files."""
