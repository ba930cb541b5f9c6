"""data_prep: RAW photos -> exposure sequences -> TFDS (array_record) datasets."""
