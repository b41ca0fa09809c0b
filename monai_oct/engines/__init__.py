
from monai_oct.engines.pseudo_label import PseudoLabeller

from monai_oct.engines.diffusion import DiffusionTrainer, diffusion_target
from monai_oct.engines.sampler import DiffusionSampler, sample_generators
from monai_oct.engines.synthesis import LabelBank, MaskSampler, PairWriter, SamplerEngine

# sketch-conditioned synthesis (Wu et al.)
from monai_oct.engines.synthesis import SketchSource, sketch_source
