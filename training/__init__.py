"""Training side of emotalk-stream: the EmoTalk model family, the synthetic corpus, the trainer,
evaluation, and checkpoint import/export. The modules the runtime shares with it (audio,
blendshapes, config, control_values, errors, framing, livelink_csv, model_files) import no PyTorch."""
