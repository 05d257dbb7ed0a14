"""ECG data: the shard format shared by data_prep and the input pipeline, and the pipeline."""
