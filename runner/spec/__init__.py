"""The spec: everything between a TrainingJob file and the frozen object the stages read.

The edge of the runner, and torch-free (validate, explain, schema, init and the Kubernetes
operator depend on it). The path of a spec through it, in order:

    parse       read the file and parse its YAML safely (size, depth, aliases, duplicate keys)
    overrides   apply `--set PATH=VALUE`
    validate    the JSON Schema, each error worded as one line naming the field
    semantics   the rules the JSON Schema cannot express
    node        the frozen, defaulted result: TrainingJob, Node
    load        the entry points that chain the steps: load_spec, job_from_document

and around it:

    trainingjob.schema.json   the one list of options: validation, defaults, explain and the CRD
    schema      load the schema, fill defaults, find the schema node of a field path
    fieldpath   field paths as text (`spec.datasets[0].crop`)
    errors      SpecError and the words every problem line is built from
    names       names made from free text (metadata.name, dataset names)
    plan        where the stages read and write, derived from the spec alone
    redact      what may be a secret, and how a value is shown when it might be one
    explain     `trainingjob explain`
    starter     `trainingjob init`
    problems    `trainingjob validate --output json` records
"""
