"""
    Moth

Julia binding of moth (MOTH model orthogonalisation, Tao et al., S&P 2022)
over its C API, include/moth.h, in libmoth. See the package README.
"""
module Moth

include("capi.jl")
include("library.jl")
include("errors.jl")
include("buffer.jl")
include("tensor.jl")
include("config.jl")
include("classifier.jl")
include("reports.jl")
include("log.jl")
include("session.jl")
include("host_model.jl")
include("distance.jl")
include("trainer.jl")

export MothError, Device, CPU, cuda, Tensor, c_shape, dtype, device,
       Config, merge_json!, set_preset!, json,
       Classifier, load_torchscript, set_train!, forward, save,
       Session, load_session, to_bytes, harden_batch!, HardenResult, last_report,
       wants_accuracy, report_accuracy!, phase, isdone, accuracy, spec,
       config_json, matrix, set_cuda_stream!, cuda_stream, set_logger!, last_error,
       Phase, Direction, StepReport, AccuracyState, Spec,
       DistanceConfig, set_samples!, set_steps!, set_seeds!, set_init_cost!, set_asr_bound!,
       DistanceResult, measure_distances, distance_matrix, input_shape, trigger,
       Trainer, train_step!, steps, load_trainer

function __init__()
    load_library!()
    init_callbacks!()
    init_host_callbacks!()
    init_distance_callbacks!()
end

end # module
