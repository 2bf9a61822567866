# The session's reports as Julia values: enumerations become symbols,
# counts and classes `Int` (classes stay 0-based, as moth numbers them).

const PHASE_KINDS = Dict{Int32,Symbol}(
    MOTH_PHASE_KIND_WARMUP => :warmup,
    MOTH_PHASE_KIND_ORTHOGONALIZE => :orthogonalize,
    MOTH_PHASE_KIND_UNIVERSAL => :universal,
    MOTH_PHASE_KIND_DONE => :done,
    MOTH_PHASE_KIND_RECOVER => :recover,
)

const DONE_REASONS = Dict{Int32,Symbol}(
    MOTH_DONE_REASON_NONE => :none,
    MOTH_DONE_REASON_STEP_BUDGET => :step_budget,
    MOTH_DONE_REASON_ACCURACY_BOUND => :accuracy_bound,
    MOTH_DONE_REASON_RECOVERY_EXHAUSTED => :recovery_exhausted,
)

const VERDICTS = Dict{Int32,Symbol}(
    MOTH_VERDICT_NONE => :none,
    MOTH_VERDICT_BASELINE => :baseline,
    MOTH_VERDICT_WITHIN_BOUND => :within_bound,
    MOTH_VERDICT_EXCEEDED => :exceeded,
    MOTH_VERDICT_RECOVERING => :recovering,
)

const MATRICES = Dict{Symbol,Int32}(
    :univ => MOTH_MATRIX_UNIV,
    :size => MOTH_MATRIX_SIZE,
    :diff => MOTH_MATRIX_DIFF,
    :count => MOTH_MATRIX_COUNT,
)

"""
    Phase

What a session's next step does: `kind` (`:warmup`, `:orthogonalize`,
`:universal`, `:done`), the `target` and `source` classes, the
`step_in_period` of a pair's period, and why it finished (`done_reason`:
`:none`, `:step_budget`, `:accuracy_bound`, `:recovery_exhausted`).
"""
struct Phase
    kind::Symbol
    target::Int
    source::Int
    step_in_period::Int
    done_reason::Symbol
end

Phase(p::moth_phase) = Phase(get(PHASE_KINDS, p.kind, :unknown), Int(p.target), Int(p.source),
                             Int(p.step_in_period), get(DONE_REASONS, p.done_reason, :unknown))

"""
    Direction

One trigger a step generated: `victim` class (-1 for a universal
trigger), `target` class, trigger `size`, whether the inversion `reached`
its attack-success bound, the stamping `bound`, and how many samples were
`stamped` with it.
"""
struct Direction
    victim::Int
    target::Int
    size::Float64
    reached::Bool
    bound::Float64
    stamped::Int
end

Direction(d::moth_direction) =
    Direction(Int(d.victim), Int(d.target), d.size, d.reached, d.bound, Int(d.stamped))

"""
    StepReport

The report of one `harden_batch!`: its `step` index, the `phase` it ran in,
its `directions`, the `inversion_steps` it used, and its wall time
(`seconds`).
"""
struct StepReport
    step::Int
    phase::Phase
    directions::Vector{Direction}
    inversion_steps::Int
    seconds::Float64
end

function StepReport(r::moth_step_report)
    n = min(Int(r.num_directions), MOTH_MAX_DIRECTIONS)
    StepReport(Int(r.step), Phase(r.phase), [Direction(r.directions[i]) for i in 1:n],
               Int(r.inversion_steps), r.seconds)
end

"""
    AccuracyState

A session's accuracy bookkeeping: the `baseline` and `last` reported
accuracies (`nothing` until reported) and whether a report is `pending`.
"""
struct AccuracyState
    baseline::Union{Nothing,Float64}
    last::Union{Nothing,Float64}
    pending::Bool
end

AccuracyState(a::moth_accuracy) = AccuracyState(a.has_baseline ? a.baseline : nothing,
                                                a.has_last ? a.last : nothing, a.pending)

"""
    Spec

The model a session was made for: `num_classes` and the input shape
`c`, `h`, `w`.
"""
struct Spec
    num_classes::Int
    c::Int
    h::Int
    w::Int
end

Spec(s::moth_spec) = Spec(Int(s.num_classes), Int(s.c), Int(s.h), Int(s.w))
