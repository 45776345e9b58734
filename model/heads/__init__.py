"""Task heads over encoder states (pure ``nn.Module``; REFERENCE.md §8).

- :mod:`model.heads.classification` — linear-probe / fine-tune heads (``AVClassifier``).
- :mod:`model.heads.localization` — contrastive projections of the trained localization variant.
- AVS segmentation and separation heads (the release's UNets).
"""
