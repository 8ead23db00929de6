"""Model families, behind one interface.

    family      ModelFamily (what the stages call) and FamilyTraits (what validate checks); torch-free
    registry    spec.model.family -> traits, and the family's module, imported on first use; torch-free
    pixart_sigma  the PixArt Sigma family
    attention   FA4 attention kernels for PixArt's transformer (spec.model.attention), checked against SDPA
    pipeline    diffusers pipeline folders for any family: find or download one, export one
    tiny/       the builtin tiny models (random weights, built offline) for smoke runs and tests
"""
