"""The statistics the product must respect: evidence of heterogeneity, calibration,
missing outcomes (IPCW), prognosis and the decision rule."""
