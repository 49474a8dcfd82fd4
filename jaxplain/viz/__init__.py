"""Pictures of explanations: heat maps over images, highlighted words, and the HTML report.

* :func:`~jaxplain.viz.heatmap.overlay` puts a patch grid or pixel map over an image in one call;
* :func:`~jaxplain.viz.text.highlight_html` (and ``highlight_ansi``, ``highlight_image``) colour words
  by their scores;
* :func:`~jaxplain.viz.report.render` writes the demo's self-contained HTML report.
"""

from jaxplain.viz.heatmap import colorize, overlay, side_by_side
from jaxplain.viz.text import highlight_ansi, highlight_html, highlight_image

__all__ = ["colorize", "highlight_ansi", "highlight_html", "highlight_image", "overlay", "side_by_side"]
