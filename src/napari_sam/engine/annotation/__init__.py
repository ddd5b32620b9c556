"""The interactive session behind the annotator: embeddings kept per plane, objects from
points and boxes, commits that never overwrite other objects, and JSON records that
replay to the same labels."""
