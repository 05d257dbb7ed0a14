"""ECG data on the host: the tf.data input pipeline, its TensorFlow transforms and augmentation, label passes and tasks."""
