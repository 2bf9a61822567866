# Hardens a TorchScript Fashion-MNIST classifier from Julia, the whole loop:
# class distances before, a hardening session driving moth's own trainer
# with clean-accuracy reports, a checkpoint of session and trainer halfway
# and a resume from it, class distances after, and the hardened model saved.
#
#   cargo build --release
#   julia --project=bindings/julia/Moth examples/julia/harden.jl MODEL.pt \
#       [--images 2000] [--steps 40] [--batch 64] [--out runs/julia]
#
# MODEL.pt: a TorchScript module, [n, 1, 28, 28] in [0, 1] -> [n, 10] logits,
# with module parameters for moth's trainer to train (torch.jit.script; a
# traced model's weights are constants). The Go tests make one at
# target/go_binding/fmnist_scripted.pt.

using Moth
include(joinpath(@__DIR__, "fashion_mnist.jl"))

function option(name, default)
    i = findfirst(==("--$name"), ARGS)
    i === nothing && return default
    value = ARGS[i + 1]
    return default isa Integer ? parse(Int, value) : value
end

"Clean accuracy of `clf` on (x, y): the share of argmax logits equal to y."
function clean_accuracy(clf, x, y)
    logits = forward(clf, x)  # (10, n)
    predicted = [argmax(view(logits, :, i)) - 1 for i in axes(logits, 2)]
    return count(predicted .== y) / length(y)
end

function distances(clf, protocol, x, y, what)
    progress = (done, total) -> (Core.print("\r  $what distances: $done/$total pairs"); true)
    r = measure_distances(clf, protocol, x, y; num_classes=10, progress)
    Core.println()
    m = distance_matrix(r)
    close(r)
    return m
end

function main()
    isempty(ARGS) && error("usage: julia --project=bindings/julia/Moth examples/julia/harden.jl MODEL.pt [options]")
    model_path = ARGS[1]
    data = option("data", "/usr/share/datasets/fashion-mnist")
    n_images, max_steps, batch_size = option("images", 2000), option("steps", 40), option("batch", 64)
    out = option("out", joinpath("runs", "julia"))
    mkpath(out)
    println("moth $(Moth.version()) from $(Moth.library_path())")

    x, y = fashion_mnist(data, "train", n_images)
    x_test, y_test = fashion_mnist(data, "t10k", 500)
    println("loaded $(length(y)) Fashion-MNIST images (and $(length(y_test)) test images)")

    clf = load_torchscript(model_path, (1, 28, 28))
    trainer = Trainer(clf)  # SGD, lr 1e-4, Nesterov momentum 0.9
    protocol = DistanceConfig("quick")
    set_samples!(protocol, 8)
    set_steps!(protocol, 60)
    before = distances(clf, protocol, x_test, y_test, "base")
    println("base model: accuracy $(round(clean_accuracy(clf, x_test, y_test), digits=4)), ",
            "mean distance $(round(distance_summary(before)[1], digits=2)), smallest $(round(distance_summary(before)[2], digits=2))")

    cfg = Config()
    cfg["max_steps"] = max_steps
    cfg["accuracy_every"] = 10
    cfg["warmup.budget.steps"] = 20  # inversion passes per warm-up trigger: short, for an example
    s = Session(cfg, 10, (1, 28, 28))
    set_logger!(s, (level, msg) -> level in (:warn, :error) && println("  [moth $level] ", msg))

    last_good = to_bytes(trainer)  # the model to go back to if accuracy drops too far
    resumed = false
    epoch = 0
    while !isdone(s)
        epoch += 1
        for (xb, yb) in batches(x, y, batch_size)
            r = harden_batch!(s, clf, xb, yb)
            if r.status === :accuracy_wanted
                acc = clean_accuracy(clf, x_test, y_test)
                verdict, drop = report_accuracy!(s, acc)
                println("  accuracy $(round(acc, digits=4)): $verdict (drop $(round(drop, digits=4)))")
                if verdict === :exceeded
                    close(trainer)
                    trainer = Trainer(clf, last_good)  # back to the last model within the bound
                    break
                end
                # Recovering: keep training on the clean batches, not a good model.
                verdict === :recovering || (last_good = to_bytes(trainer))
                r = harden_batch!(s, clf, xb, yb)
            end
            r.status === :done && break
            loss = train_step!(trainer, r.stamped, yb)
            rep = r.report
            dirs = join(["$(d.victim)->$(d.target) size $(round(d.size, digits=1))" for d in rep.directions], ", ")
            println("  step $(rep.step) $(rep.phase.kind) | $dirs | loss $(round(loss, digits=4))")

            if !resumed && step(s) == max_steps ÷ 2
                # Checkpoint both halves of the state at the same step, then
                # continue from the files as a restarted program would.
                save(s, joinpath(out, "session.ckpt"))
                save(trainer, joinpath(out, "trainer.ckpt"))
                close(s); close(trainer); close(clf)
                clf = load_torchscript(model_path, (1, 28, 28))
                trainer = load_trainer(clf, joinpath(out, "trainer.ckpt"))
                s = load_session(joinpath(out, "session.ckpt"); num_classes=10, shape=(1, 28, 28))
                set_logger!(s, (level, msg) -> level in (:warn, :error) && println("  [moth $level] ", msg))
                resumed = true
                println("  resumed at step $(step(s)) from $(out)")
            end
        end
        epoch >= 50 && break
    end
    p = phase(s)
    println("session done after $(step(s)) steps ($(p.done_reason))")
    counts = matrix(s, :count)
    println("pairs chosen: ", join(["$(i-1)-$(j-1) x$(Int(counts[i, j]))" for i in 1:10, j in 1:10 if i < j && counts[i, j] > 0], ", "))

    after = distances(clf, protocol, x_test, y_test, "hardened")
    (mb, sb), (ma, sa) = distance_summary(before), distance_summary(after)
    println("hardened model: accuracy $(round(clean_accuracy(clf, x_test, y_test), digits=4))")
    println("mean distance $(round(mb, digits=2)) -> $(round(ma, digits=2)) ($(round(100 * (ma - mb) / mb, digits=1))%), ",
            "smallest $(round(sb, digits=2)) -> $(round(sa, digits=2))")
    save(clf, joinpath(out, "hardened.pt"))
    println("wrote $(joinpath(out, "hardened.pt"))")
    println("ok")
end

main()
