# The C side of include/moth.h in Julia terms: the opaque handle types, the
# structs moth passes by value (same field types and order as in C, so the
# same layout), and the header's constants under their C names. The
# foreign calls themselves sit beside the Julia functions that use them;
# tests/julia_binding.rs checks every one of them, these structs and these
# constants against include/moth.h.

# The header's integer constants (enumerators and #defines).
const MOTH_MAX_DIRECTIONS = Int(2)
const MOTH_VERSION_MAJOR = Int(0)
const MOTH_VERSION_MINOR = Int(1)
const MOTH_VERSION_PATCH = Int(0)
const MOTH_ABI_VERSION = UInt32(1)
const MOTH_MATRIX_UNIV = Int32(0)
const MOTH_MATRIX_SIZE = Int32(1)
const MOTH_MATRIX_DIFF = Int32(2)
const MOTH_MATRIX_COUNT = Int32(3)
const MOTH_DTYPE_FLOAT32 = Int32(0)
const MOTH_DTYPE_FLOAT64 = Int32(1)
const MOTH_DTYPE_INT64 = Int32(2)
const MOTH_DTYPE_INT32 = Int32(3)
const MOTH_DTYPE_UINT8 = Int32(4)
const MOTH_DEVICE_TYPE_CPU = Int32(0)
const MOTH_DEVICE_TYPE_CUDA = Int32(1)
const MOTH_STATUS_OK = Int32(0)
const MOTH_STATUS_DONE = Int32(1)
const MOTH_STATUS_ACCURACY_WANTED = Int32(2)
const MOTH_STATUS_CANCELLED = Int32(3)
const MOTH_STATUS_NULL_POINTER = Int32(-1)
const MOTH_STATUS_INVALID_UTF8 = Int32(-2)
const MOTH_STATUS_INVALID_ARGUMENT = Int32(-3)
const MOTH_STATUS_INVALID_CONFIG = Int32(-4)
const MOTH_STATUS_INVALID_INPUT = Int32(-5)
const MOTH_STATUS_WRONG_SHAPE = Int32(-6)
const MOTH_STATUS_WRONG_DTYPE = Int32(-7)
const MOTH_STATUS_LABEL_OUT_OF_RANGE = Int32(-8)
const MOTH_STATUS_INVALID_VALUE = Int32(-9)
const MOTH_STATUS_PHASE = Int32(-10)
const MOTH_STATUS_CHECKPOINT = Int32(-11)
const MOTH_STATUS_IO = Int32(-12)
const MOTH_STATUS_FORMAT = Int32(-13)
const MOTH_STATUS_DEVICE = Int32(-14)
const MOTH_STATUS_TORCH = Int32(-15)
const MOTH_STATUS_CALLBACK = Int32(-16)
const MOTH_STATUS_BUFFER_TOO_SMALL = Int32(-17)
const MOTH_STATUS_PANIC = Int32(-18)
const MOTH_STATUS_POISONED = Int32(-19)
const MOTH_STATUS_BUSY = Int32(-20)
const MOTH_STATUS_UNSUPPORTED = Int32(-21)
const MOTH_STATUS_INVALID_HANDLE = Int32(-22)
const MOTH_STATUS_MODEL_OUTPUT = Int32(-23)
const MOTH_STATUS_COLLECTIVE = Int32(-24)
const MOTH_PHASE_KIND_WARMUP = Int32(0)
const MOTH_PHASE_KIND_ORTHOGONALIZE = Int32(1)
const MOTH_PHASE_KIND_UNIVERSAL = Int32(2)
const MOTH_PHASE_KIND_DONE = Int32(3)
const MOTH_PHASE_KIND_RECOVER = Int32(4)
const MOTH_DONE_REASON_NONE = Int32(0)
const MOTH_DONE_REASON_STEP_BUDGET = Int32(1)
const MOTH_DONE_REASON_ACCURACY_BOUND = Int32(2)
const MOTH_DONE_REASON_RECOVERY_EXHAUSTED = Int32(3)
const MOTH_VERDICT_NONE = Int32(0)
const MOTH_VERDICT_BASELINE = Int32(1)
const MOTH_VERDICT_WITHIN_BOUND = Int32(2)
const MOTH_VERDICT_EXCEEDED = Int32(3)
const MOTH_VERDICT_RECOVERING = Int32(4)
const MOTH_LOG_LEVEL_ERROR = Int32(1)
const MOTH_LOG_LEVEL_WARN = Int32(2)
const MOTH_LOG_LEVEL_INFO = Int32(3)
const MOTH_LOG_LEVEL_DEBUG = Int32(4)
const MOTH_LOG_LEVEL_TRACE = Int32(5)

# Opaque handles: only ever behind a `Ptr`.
mutable struct moth_buffer end
mutable struct moth_classifier end
mutable struct moth_config end
mutable struct moth_distance_config end
mutable struct moth_distance_result end
mutable struct moth_session end
mutable struct moth_tensor end
mutable struct moth_trainer end

struct moth_device
    kind::Int32   # MOTH_DEVICE_TYPE_*
    index::Int32
end

struct moth_phase
    kind::Int32   # MOTH_PHASE_KIND_*
    target::Csize_t
    source::Csize_t
    step_in_period::Csize_t
    done_reason::Int32
end

struct moth_direction
    victim::Int64
    target::Csize_t
    size::Float64
    reached::Bool
    bound::Float64
    stamped::Csize_t
end

struct moth_step_report
    step::UInt64
    phase::moth_phase
    num_directions::Csize_t
    directions::NTuple{MOTH_MAX_DIRECTIONS,moth_direction}
    inversion_steps::Csize_t
    seconds::Float64
end

struct moth_accuracy
    has_baseline::Bool
    baseline::Float64
    has_last::Bool
    last::Float64
    pending::Bool
end

struct moth_spec
    num_classes::Csize_t
    c::Int64
    h::Int64
    w::Int64
end

"""
C functions of include/moth.h that this package does not call, with the
reason. tests/julia_binding.rs fails on an export that is neither called
nor listed here.
"""
const NOT_WRAPPED = Dict{Symbol,String}(
    :moth_tensor_from_at_tensor => "C++ only: takes a pointer to a libtorch at::Tensor, which Julia does not have",
    :moth_tensor_to_at_tensor => "C++ only: gives a pointer to a libtorch at::Tensor, which Julia cannot use",
    :moth_classifier_from_callback => "its forward callback must return libtorch tensors that autograd flows through back to the input; Julia models have no libtorch autograd graph (Julia models use moth_classifier_from_host)",
    :moth_session_set_collective => "data-parallel hardening: its all-reduce and broadcast callbacks would be called from inside a step on the trainer's process group; not wrapped yet (a Julia trainer with MPI.jl would need them)",
)

