"""Feature importance: which patches and pixels of an image, and which words of a text, drove a score.

:func:`attribute` is the one calling convention; each method lives in its own module as pure
functions ``image_<method>`` / ``text_<method>(config, scoring, inputs, target, **options)``:

===================  =============================================  ===============
method               module                                         sides
===================  =============================================  ===============
``gradient``         :mod:`~jaxplain.attribution.gradient`          image
``gradient_x_input`` :mod:`~jaxplain.attribution.gradient`          image, text
``ig``               :mod:`~jaxplain.attribution.integrated`        image, text
``smoothgrad``       :mod:`~jaxplain.attribution.gradient`          image, text
``gradcam``          :mod:`~jaxplain.attribution.gradcam`           image
``rollout``          :mod:`~jaxplain.attribution.rollout`           image, text
``chefer``           :mod:`~jaxplain.attribution.relevance`         image, text
``occlusion``        :mod:`~jaxplain.attribution.occlusion`         image, text
``rise``             :mod:`~jaxplain.attribution.rise`              image
``random``           (a baseline for the metrics)                   image, text
===================  =============================================  ===============

Targets (what is explained) are described in :mod:`~jaxplain.attribution.targets`; they follow the
model's decision (a softmax over classes for CLIP, a sigmoid per class for SigLIP).

The methods run the model through its family (:class:`~jaxplain.models.family.Family`, carried by
:class:`Scoring`) and read its structural facts rather than assume CLIP's: where an image tower has no
class token (SigLIP), ``rollout`` starts from its attention-pooling head's attention, ``gradcam`` reads every
token as a patch, and ``chefer`` on images is refused (it reads a class token's relevance row).
"""

from jaxplain.attribution.api import METHODS, Attribution, Method, attribute, methods_for
from jaxplain.attribution.core import Scoring
from jaxplain.attribution.targets import Target, TargetSpec

__all__ = ["METHODS", "Attribution", "Method", "Scoring", "Target", "TargetSpec", "attribute", "methods_for"]
