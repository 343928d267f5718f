"""pixelcnn_tf: PixelCNN-family autoregressive image models in TensorFlow 2."""
from pixelcnn_tf.config import load_config
from pixelcnn_tf.layers import MaskedConv2D
from pixelcnn_tf.masks import get_mask
from pixelcnn_tf.models import build_model
from pixelcnn_tf.sampling import generate_images

__all__ = ["get_mask", "MaskedConv2D", "load_config", "build_model", "generate_images"]
