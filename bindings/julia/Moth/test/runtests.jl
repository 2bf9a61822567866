# The package's tests, run against a built libmoth (MOTH_LIBRARY, or the
# repository's target/release/libmoth.so) and a TorchScript Fashion-MNIST
# classifier (1x28x28 -> 10 logits) at MOTH_TEST_MODEL (and a trainable one
# at MOTH_TEST_TRAINABLE); tests/julia_binding.rs runs them where `julia` is
# installed:
#   julia --project=bindings/julia/Moth bindings/julia/Moth/test/runtests.jl
using Test
using Moth

const MODEL = get(ENV, "MOTH_TEST_MODEL", "")
# A TorchScript model with module parameters, for moth's trainer (a traced
# model's weights are constants): MOTH_TEST_TRAINABLE.
const TRAINABLE = get(ENV, "MOTH_TEST_TRAINABLE", "")
const CLASSES = 10
const SIDE = 28

# Fashion-MNIST-shaped images in Flux's WHCN layout, labels cycling through
# the classes: dim noise plus a bright band whose rows depend on the class.
function batch(seed::Integer, n::Integer)
    state = UInt64(seed) * 0x9E3779B97F4A7C15 + 1
    rand01() = (state = state * 6364136223846793005 + 1442695040888963407; Float32((state >> 40) / 2^24))
    x = Array{Float32,4}(undef, SIDE, SIDE, 1, n)
    y = Vector{Int64}(undef, n)
    for i in 1:n
        k = (i - 1) % CLASSES
        y[i] = k
        for row in 1:SIDE, col in 1:SIDE
            x[col, row, 1, i] = 0.3f0 * rand01()
        end
        for row in (2k + 1):min(2k + 4, SIDE), col in 5:24
            x[col, row, 1, i] = 0.7f0 + 0.3f0 * rand01()
        end
    end
    return x, y
end

# Inversions of a few passes, so that a step takes tens of milliseconds.
function quick_config(extra::AbstractString="")
    cfg = Config()
    merge_json!(cfg, """{"seed": 5, "accuracy_every": 0, "portion": 0.5, "period": 2,
        "warmup": {"budget": {"steps": 6}, "pool_per_class": 2},
        "first": {"steps": 6}, "later": {"steps": 3},
        "bounds": {"cap_fraction": 1.0}}""")
    isempty(extra) || merge_json!(cfg, extra)
    return cfg
end

new_session(cfg=quick_config()) = Session(cfg, CLASSES, (1, SIDE, SIDE))

function thrown(f)
    try
        f()
    catch e
        return e
    end
    error("no exception")
end

@testset "Moth" begin
    @testset "version and ABI" begin
        @test occursin(r"^\d+\.\d+\.\d+$", Moth.version())
        @test Moth.abi_version() == Moth.MOTH_ABI_VERSION
        @test isfile(Moth.library_path())
    end

    @testset "errors carry the status and moth's message" begin
        @test Moth.status_symbol(Moth.MOTH_STATUS_WRONG_SHAPE) === :wrong_shape
        @test Moth.status_symbol(12345) === :unknown
        cfg = Config()
        e = thrown(() -> (cfg["no_such_key"] = 1))
        @test e isa MothError && e.status === :invalid_config && e.code == Moth.MOTH_STATUS_INVALID_CONFIG
        @test occursin("no_such_key", e.message)
        @test occursin("invalid_config", sprint(showerror, e))
    end

    @testset "config" begin
        cfg = Config()
        cfg["max_steps"] = 7
        cfg["seed"] = typemax(UInt64)
        cfg["portion"] = 0.25
        cfg["method"] = "Universal"
        merge_json!(cfg, """{"warmup": {"budget": {"steps": 3}}}""")
        text = json(cfg)
        @test occursin("\"max_steps\":7", replace(text, " " => ""))
        @test occursin(string(typemax(UInt64)), text)
        @test occursin("0.25", text)
        @test thrown(() -> merge_json!(cfg, """{"seed": """)).status === :invalid_config
        @test json(cfg) == text  # a refused change leaves it unchanged
        @test thrown(() -> set_preset!(cfg, "nope")).status === :invalid_config
        set_preset!(cfg, "reference")
        @test json(cfg) != text
        # Cstring refuses NUL bytes before C sees them.
        @test_throws ArgumentError (cfg["max_steps\0x"] = 3)
        close(cfg)
        close(cfg)  # twice is fine
        @test !isopen(cfg)
        @test thrown(() -> (cfg["seed"] = 1)).status === :null_pointer
    end

    @testset "tensors: WHCN arrays are NCHW tensors, no permutation" begin
        a = reshape(Float32.(1:(4 * 3 * 2 * 5)), 4, 3, 2, 5)  # W, H, C, N
        t = Tensor(a)
        @test c_shape(t) == [5, 2, 3, 4]  # N, C, H, W
        @test size(t) == (4, 3, 2, 5)
        @test dtype(t) === Float32
        @test device(t) == Moth.CPU
        @test Array(t) == a
        for T in (Float64, Int64, Int32, UInt8)
            v = T[1, 2, 3]
            @test Array(Tensor(v)) == v
        end
        # close, then the finalizer: one free.
        close(t)
        finalize(t)
        @test !isopen(t)
        @test thrown(() -> size(t)).status === :null_pointer
        u = Tensor(a)
        finalize(u)
        close(u)
        @test !isopen(u)
    end

    isfile(MODEL) || error("MOTH_TEST_MODEL must name the TorchScript test model (is $(repr(MODEL)))")

    @testset "TorchScript classifier" begin
        @test thrown(() -> load_torchscript("/nonexistent/model.pt", (1, SIDE, SIDE))).status === :io
        clf = load_torchscript(MODEL, (1, SIDE, SIDE))
        x, _ = batch(1, 8)
        logits = forward(clf, x)
        @test size(logits) == (CLASSES, 8)
        @test all(isfinite, logits)
        set_train!(clf, false)
        path = joinpath(mktempdir(), "saved.pt")
        save(clf, path)
        again = load_torchscript(path, (1, SIDE, SIDE))
        @test forward(again, x) ≈ logits
        close(again)
        close(clf)
    end

    @testset "hardening steps and the step budget" begin
        clf = load_torchscript(MODEL, (1, SIDE, SIDE))
        s = new_session(quick_config("""{"max_steps": 3}"""))
        @test phase(s).kind === :warmup
        @test spec(s) == Spec(CLASSES, 1, SIDE, SIDE)
        x, y = batch(2, 40)
        messages = Tuple{Symbol,String}[]
        set_logger!(s, (level, msg) -> push!(messages, (level, msg)))
        for i in 1:3
            r = harden_batch!(s, clf, x, y)
            @test r.status === :ok
            @test size(r.stamped) == size(x)
            @test all(0 .<= r.stamped .<= 1)
            @test r.report.step == i - 1
            @test last_report(s).step == i - 1
            @test r.report.phase.kind === :warmup && length(r.report.directions) == 1
        end
        @test step(s) == 3
        @test any(m -> m[1] === :info, messages)
        r = harden_batch!(s, clf, x, y)
        @test r.status === :done && r.stamped === nothing
        @test isdone(s)
        @test phase(s).done_reason === :step_budget
        @test size(matrix(s, :univ)) == (CLASSES, CLASSES)
        @test_throws ArgumentError matrix(s, :nope)
        @test occursin("max_steps", config_json(s))
        close(s)
        close(clf)
    end

    @testset "accuracy protocol" begin
        clf = load_torchscript(MODEL, (1, SIDE, SIDE))
        s = new_session(quick_config("""{"accuracy_every": 2, "max_accuracy_drop": 0.05}"""))
        @test wants_accuracy(s)
        x, y = batch(3, 40)
        @test harden_batch!(s, clf, x, y).status === :accuracy_wanted
        @test step(s) == 0
        @test thrown(() -> report_accuracy!(s, 1.5)).status === :invalid_value
        @test report_accuracy!(s, 0.9) == (:baseline, 0.0)
        @test accuracy(s).baseline == 0.9
        @test thrown(() -> report_accuracy!(s, 0.9)).status === :phase
        @test harden_batch!(s, clf, x, y).status === :ok
        @test harden_batch!(s, clf, x, y).status === :ok
        @test harden_batch!(s, clf, x, y).status === :accuracy_wanted
        verdict, drop = report_accuracy!(s, 0.8)
        @test verdict === :exceeded && drop ≈ 0.1
        @test isdone(s)
        @test phase(s).done_reason === :accuracy_bound
        @test harden_batch!(s, clf, x, y).status === :done
        close(s)
        close(clf)
    end

    @testset "failed steps carry their status and change nothing" begin
        clf = load_torchscript(MODEL, (1, SIDE, SIDE))
        s = new_session()
        x, y = batch(4, 20)
        before = to_bytes(s)
        e = thrown(() -> harden_batch!(s, clf, x, fill(Int64(CLASSES), 20)))
        @test e.status === :label_out_of_range && !isempty(e.message)
        @test e.message == last_error(s)
        @test thrown(() -> harden_batch!(s, clf, x, y[1:10])).status === :wrong_shape
        bad = copy(x)
        bad[1] = 2.0f0
        @test thrown(() -> harden_batch!(s, clf, bad, y)).status === :invalid_value
        @test thrown(() -> last_report(s)).status === :phase
        @test step(s) == 0
        @test to_bytes(s) == before
        close(s)
        close(clf)
    end

    @testset "checkpoint and resume are bit-exact" begin
        clf = load_torchscript(MODEL, (1, SIDE, SIDE))
        a = new_session()
        batches = [batch(10 + i, 40) for i in 1:6]
        for (x, y) in batches[1:3]
            @test harden_batch!(a, clf, x, y).status === :ok
        end
        bytes = to_bytes(a)
        path = joinpath(mktempdir(), "session.ckpt")
        save(a, path)
        b = Session(bytes; num_classes=CLASSES, shape=(1, SIDE, SIDE))
        c = load_session(path)
        @test step(b) == step(c) == 3
        for (x, y) in batches[4:6]
            ra = harden_batch!(a, clf, x, y)
            rb = harden_batch!(b, clf, x, y)
            rc = harden_batch!(c, clf, x, y)
            @test ra.stamped == rb.stamped == rc.stamped
        end
        @test to_bytes(a) == to_bytes(b)
        @test thrown(() -> Session(bytes[1:end÷2])).status === :checkpoint
        @test thrown(() -> Session(bytes; num_classes=3, shape=(1, SIDE, SIDE))).status === :checkpoint
        foreach(close, (a, b, c, clf))
    end

    @testset "tasks on several threads get their own session's errors" begin
        clf = load_torchscript(MODEL, (1, SIDE, SIDE))
        x, y = batch(5, 20)
        results = Vector{Any}(undef, 4)
        @sync for i in 1:4
            Threads.@spawn begin
                s = new_session()
                labels = i % 2 == 0 ? fill(Int64(CLASSES + i), 20) : y[1:10]
                e = thrown(() -> harden_batch!(s, clf, x, labels))
                yield()  # may move the task to another thread
                results[i] = (e.status, e.message == last_error(s))
                close(s)
            end
        end
        for i in 1:4
            @test results[i] == (i % 2 == 0 ? :label_out_of_range : :wrong_shape, true)
        end
        close(clf)
    end

    @testset "closed handles fail cleanly" begin
        clf = load_torchscript(MODEL, (1, SIDE, SIDE))
        s = new_session()
        close(s)
        close(s)
        @test thrown(() -> step(s)).status === :null_pointer
        x, y = batch(6, 20)
        @test thrown(() -> harden_batch!(new_session(), Classifier(Ptr{Moth.moth_classifier}(C_NULL)), x, y)).status === :null_pointer
        close(clf)
        @test thrown(() -> forward(clf, x)).status === :null_pointer
        GC.gc()  # finalizers of everything above run, after the closes
    end

    @testset "a Julia model through host callbacks" begin
        # A linear model with its gradient written out: W * x + b.
        W = Float32[sin(0.01f0 * i + 0.3f0 * k) for k in 1:CLASSES, i in 1:(SIDE * SIDE)]
        fwd(x) = W * reshape(x, :, size(x, 4))
        grad(x, dy) = reshape(W' * dy, size(x))
        modes = Bool[]
        clf = Classifier(fwd, grad; num_classes=CLASSES, set_train=t -> push!(modes, t))
        x, y = batch(7, 20)
        @test forward(clf, x) ≈ fwd(x)
        set_train!(clf, true)
        @test modes[end] == true
        s = new_session(quick_config("""{"max_steps": 2}"""))
        r = harden_batch!(s, clf, x, y)
        @test r.status === :ok && size(r.stamped) == size(x)
        @test modes[end] == false  # moth inverts in evaluation mode
        # A failing callback becomes :callback, with the exception's text.
        broken = Classifier(x -> error("the model broke"), grad; num_classes=CLASSES)
        e = thrown(() -> forward(broken, x))
        @test e.status === :callback && occursin("the model broke", e.message)
        narrow = Classifier(x -> zeros(Float32, 3, size(x, 4)), grad; num_classes=CLASSES)
        @test thrown(() -> forward(narrow, x)).status === :callback
        # From a task that may migrate, the call runs pinned to one thread.
        @test fetch(Threads.@spawn forward(clf, x)) ≈ fwd(x)
        foreach(close, (s, clf, broken, narrow))
    end

    @testset "distances" begin
        clf = load_torchscript(MODEL, (1, SIDE, SIDE))
        d = DistanceConfig("quick")
        set_samples!(d, 2)
        set_steps!(d, 5)
        set_seeds!(d, [0])
        @test occursin("steps", json(d))
        @test thrown(() -> DistanceConfig("nope")).status === :invalid_config
        x, y = batch(8, 40)
        pairs = [(0, 1), (1, 0), (2, 3)]
        calls = Ref(0)
        r = measure_distances(clf, d, x, y; num_classes=CLASSES, pairs,
                              progress=(done, total) -> (calls[] += 1; done <= total))
        m = distance_matrix(r)
        @test size(m) == (CLASSES, CLASSES) && m[1, 1] == 0 && calls[] > 0
        @test all(m[i, j] == 0 for i in 1:CLASSES, j in 1:CLASSES if !((i - 1, j - 1) in pairs))
        @test input_shape(r) == (1, SIDE, SIDE)
        t = trigger(r, 0, 1)
        @test t === nothing || (size(t.mask) == (SIDE, SIDE) && size(t.pattern) == (SIDE, SIDE, 1))
        @test trigger(r, 5, 6) === nothing
        @test occursin("values", json(r))
        again = measure_distances(clf, d, x, y; num_classes=CLASSES, pairs)
        @test distance_matrix(again) == m  # same protocol, same matrix
        @test measure_distances(clf, d, x, y; num_classes=CLASSES, pairs, progress=(a, b) -> false) === nothing
        @test_throws ErrorException measure_distances(clf, d, x, y; num_classes=CLASSES, pairs,
                                                      progress=(a, b) -> error("stop here"))
        foreach(close, (r, again, d, clf))
    end

    @testset "moth's trainer: steps, checkpoint, bit-exact resume" begin
        isfile(TRAINABLE) || error("MOTH_TEST_TRAINABLE must name a trainable TorchScript model (is $(repr(TRAINABLE)))")
        clf = load_torchscript(TRAINABLE, (1, SIDE, SIDE))
        tr = Trainer(clf)
        x, y = batch(9, 32)
        @test isfinite(train_step!(tr, x, y))
        @test steps(tr) == 1
        bytes = to_bytes(tr)
        path = joinpath(mktempdir(), "trainer.ckpt")
        save(tr, path)
        next = train_step!(tr, x, y)
        twin = load_torchscript(TRAINABLE, (1, SIDE, SIDE))
        resumed = Trainer(twin, bytes)
        @test steps(resumed) == 1
        @test train_step!(resumed, x, y) == next
        @test forward(twin, x) == forward(clf, x)
        from_file = load_trainer(load_torchscript(TRAINABLE, (1, SIDE, SIDE)), path)
        @test steps(from_file) == 1
        @test thrown(() -> Trainer(clf; optimizer="nope")).status === :invalid_config
        @test thrown(() -> train_step!(tr, x, fill(Int64(CLASSES), 32))).status === :label_out_of_range
        host = Classifier(x -> zeros(Float32, CLASSES, size(x, 4)), (x, dy) -> zero(x); num_classes=CLASSES)
        @test thrown(() -> Trainer(host)).status === :unsupported
        foreach(close, (tr, resumed, from_file, clf, twin, host))
    end

    @testset "CUDA stream" begin
        s = new_session()
        @test cuda_stream(s) == (-1, C_NULL)
        e = try
            set_cuda_stream!(s, 0, Ptr{Cvoid}(UInt(0x1000)))
            nothing
        catch err
            err
        end
        @test e === nothing || e.status in (:unsupported, :device)
        close(s)
    end
end
