"""The U-Net that learns the nuclear envelope from consensus, and everything around it.

Only ``unet``, ``train``, ``keras_io`` and ``predict`` import Keras (the ``ml`` extra, installed on the
GPU worker); every other module here is plain numpy so the daemon can import it without Keras.
"""
