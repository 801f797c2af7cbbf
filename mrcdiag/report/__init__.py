"""Rendering what the analysis produced: terminal text, JSON, HTML, Perfetto. Renderers
only render: every number they show was computed by mrcdiag/analyzers."""
