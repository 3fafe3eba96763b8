"""The run directory: the one hand-off between training and everything after it.

This package alone knows its layout (`layout`), writes it (`write`), reads it (`read`), picks its
checkpoints (`checkpoints`) and loads a trained model from it (`load`). Import from the submodules;
this file re-exports nothing so that importing the package stays free of pydantic and torch.
"""
