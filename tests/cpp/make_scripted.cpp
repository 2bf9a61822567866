// Writes a small TorchScript classifier with real parameters, as PyTorch's
// torch.jit.script would: 1x28x28 inputs in [0,1], 10 logits. Used by
// tests/torchscript_harden.rs (Python's torch is not installed here).
#include <torch/script.h>
#include <iostream>

int main(int argc, char** argv) {
    if (argc != 2) {
        std::cerr << "usage: make_scripted OUT.pt\n";
        return 2;
    }
    torch::manual_seed(0);
    torch::jit::Module m("TinyNet");
    m.register_parameter("w1", (torch::randn({32, 784}) * 0.05).set_requires_grad(true), false);
    m.register_parameter("b1", torch::zeros({32}).set_requires_grad(true), false);
    m.register_parameter("w2", (torch::randn({10, 32}) * 0.2).set_requires_grad(true), false);
    m.register_parameter("b2", torch::zeros({10}).set_requires_grad(true), false);
    m.define(R"JIT(
def forward(self, x):
    h = torch.relu(torch.matmul((x.flatten(1) - 0.286) / 0.353, self.w1.t()) + self.b1)
    return torch.matmul(h, self.w2.t()) + self.b2
)JIT");
    m.save(argv[1]);
    std::cout << "wrote " << argv[1] << "\n";
    return 0;
}
