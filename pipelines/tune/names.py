"""The tuners and objectives `vae tune` offers (no imports: the `vae` parser reads them)."""

TUNERS = ("hyperband", "bayesian", "random")
OBJECTIVES = ("val_loss", "iwae_nll")
