"""Stand-ins of A1111 v1.10 modules/models/sd3/ (SD3 medium): mmdit.py, other_impls.py, sd3_impls.py, sd3_model.py."""
