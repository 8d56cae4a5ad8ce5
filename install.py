"""Run by the WebUI's launcher when the extension loads.

ASAG needs nothing beyond what every supported WebUI already ships (torch, numpy, gradio), so
there is nothing to install; this file exists so the launcher finds the usual entry point and
so that no future change pulls a second torch into the WebUI's environment by accident."""
