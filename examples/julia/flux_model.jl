# A Flux model hardened by moth: moth sees the model only through two
# callbacks, its forward pass and its input gradient (a vector-Jacobian
# product from Zygote.pullback), inverts triggers on it, and hands back
# stamped batches that Flux trains on. Distances before and after are
# measured on the same callbacks.
#
# Needs Flux and Zygote, which the Moth package itself does not depend on:
#   julia -e 'using Pkg; Pkg.activate("runs/flux-env"); Pkg.develop(path="bindings/julia/Moth"); Pkg.add(["Flux", "Zygote"])'
#   julia --project=runs/flux-env examples/julia/flux_model.jl [--images 4000] [--steps 30]

using Flux, Zygote, Moth
include(joinpath(@__DIR__, "fashion_mnist.jl"))

option(name, default) = (i = findfirst(==("--$name"), ARGS); i === nothing ? default : parse(Int, ARGS[i + 1]))

test_accuracy(model, x, y) = count(vec(map(i -> i[1] - 1, argmax(model(x); dims=1))) .== y) / length(y)

function flux_step!(model, opt, xb, yb)
    loss, grads = Flux.withgradient(m -> Flux.logitcrossentropy(m(xb), Flux.onehotbatch(yb, 0:9)), model)
    Flux.update!(opt, model, grads[1])
    return loss
end

function main()
    data = "/usr/share/datasets/fashion-mnist"
    x, y = fashion_mnist(data, "train", option("images", 4000))
    x_test, y_test = fashion_mnist(data, "t10k", 500)
    model = Chain(Conv((3, 3), 1 => 16, relu), MaxPool((2, 2)),
                  Conv((3, 3), 16 => 32, relu), MaxPool((2, 2)),
                  Flux.flatten, Dense(5 * 5 * 32 => 10))
    opt = Flux.setup(Adam(1e-3), model)
    for (xb, yb) in batches(x, y, 64)
        flux_step!(model, opt, xb, yb)
    end
    Flux.testmode!(model)
    println("Flux model trained one epoch: accuracy $(test_accuracy(model, x_test, y_test))")

    # moth's view of the model: logits (10, n) and dL/dx for a given dL/dlogits.
    clf = Classifier(x -> model(x),
                     (x, dy) -> Zygote.pullback(model, x)[2](dy)[1];
                     num_classes=10,
                     set_train=t -> t ? Flux.trainmode!(model) : Flux.testmode!(model))

    protocol = DistanceConfig("quick")
    set_samples!(protocol, 8)
    set_steps!(protocol, 60)
    before = distance_matrix(measure_distances(clf, protocol, x_test, y_test; num_classes=10))

    cfg = Config()
    cfg["max_steps"] = option("steps", 30)
    cfg["accuracy_every"] = 0
    cfg["warmup.budget.steps"] = 20
    s = Session(cfg, 10, (1, 28, 28))
    hardening = Flux.setup(Descent(1e-3), model)  # the hardening phase's small steps
    while !isdone(s)
        for (xb, yb) in batches(x, y, 64)
            r = harden_batch!(s, clf, xb, yb)  # moth sets evaluation mode for its inversions
            r.status === :done && break
            Flux.trainmode!(model)
            loss = flux_step!(model, hardening, r.stamped, yb)  # the stamped batch, the true labels
            Flux.testmode!(model)
            println("step $(r.report.step) $(r.report.phase.kind): loss $(round(loss, digits=4))")
        end
    end

    after = distance_matrix(measure_distances(clf, protocol, x_test, y_test; num_classes=10))
    (mb, _), (ma, _) = distance_summary(before), distance_summary(after)
    println("accuracy $(test_accuracy(model, x_test, y_test)); mean distance $(round(mb, digits=2)) -> $(round(ma, digits=2))")
end

main()
