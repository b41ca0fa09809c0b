
from monai_oct.engines.pseudo_label import PseudoLabeller
