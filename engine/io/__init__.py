"""What goes in and comes out around the model: input discovery (inputs), label sets (labels),
result files with resume and shards (results), and the one atomic file write (atomic)."""
