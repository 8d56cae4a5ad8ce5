"""Stand-in of AUTOMATIC1111's `modules` package: only what lib_asag/hosts/a1111.py and scripts/asag.py touch.

Each module cites the real file it mirrors (A1111 v1.8.0 = Forge snapshot commit bef51aed; v1.10 read on
AUTOMATIC1111/stable-diffusion-webui). Nothing here is copied host code.
"""
