"""Training side of emotalk-stream: the EmoTalk model family, the synthetic corpus, the trainer,
evaluation, and checkpoint import/export."""
