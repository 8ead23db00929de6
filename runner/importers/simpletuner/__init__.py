"""`trainingjob import-simpletuner`: a SimpleTuner config.json + multidatabackend.json as a
TrainingJob. convert.py is the entry point; options.py reads values and holds the option
tables; config.py and backends.py convert the two files."""
