"""The spec: everything between a TrainingJob file and the frozen object the stages read.

The edge of the runner, and torch-free (validate, explain, schema, init and the Kubernetes
operator depend on it):

    trainingjob.schema.json   the one list of options: validation, defaults, explain and the CRD
    schema      load the schema, fill defaults, walk it by field path
    load        read a spec file, parse its YAML safely, validate, freeze (load_spec)
    semantics   the rules the JSON Schema cannot express
    plan        where the stages read and write, derived from the spec alone
    explain     `trainingjob explain`
    starter     `trainingjob init`
    problems    `trainingjob validate --output json` records
    redact      what may be a secret, and how to show it
"""
