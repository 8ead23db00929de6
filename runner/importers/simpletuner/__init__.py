"""`trainingjob import-simpletuner`: a SimpleTuner config.json + multidatabackend.json as a TrainingJob."""
