"""The embedded default's builder: the tiny teacher and student (tokenizer, SFT on the exploring
expert, judge examples, DAgger rounds), cached and shipped in assets/. Nothing in the training
loop depends on it; a run with real models never imports it."""
