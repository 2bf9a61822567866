// moth_trainer.hpp: moth's own training step in the C++ wrapper (included
// by moth.hpp; include that).
#ifndef MOTH_TRAINER_HPP
#define MOTH_TRAINER_HPP

#include "moth.hpp"

namespace moth {

/// Trains a TorchScript Classifier with moth's optimisers; checkpoints
/// model and optimiser together (resumes bit for bit). The Classifier must
/// outlive the Trainer.
class Trainer {
  public:
    /// `optimizer`: "hardening", "pretraining" or a complete JSON object
    /// (see moth_trainer_new).
    explicit Trainer(Classifier &model, const std::string &optimizer = "hardening") {
        check(moth_trainer_new(model.get(), optimizer.c_str(), &raw_));
    }
    /// Restores a checkpoint written by save() into `model` and a trainer.
    static Trainer load(Classifier &model, const std::string &path) {
        moth_trainer *raw = nullptr;
        check(moth_trainer_load(model.get(), path.c_str(), &raw));
        return Trainer(raw);
    }
    /// Restores the bytes of to_bytes().
    static Trainer from_bytes(Classifier &model, const std::vector<uint8_t> &bytes) {
        moth_trainer *raw = nullptr;
        check(moth_trainer_from_buffer(model.get(), bytes.data(), bytes.size(), &raw));
        return Trainer(raw);
    }
    Trainer(Trainer &&o) noexcept : raw_(std::exchange(o.raw_, nullptr)) {}
    Trainer &operator=(Trainer &&o) noexcept {
        std::swap(raw_, o.raw_);
        return *this;
    }
    Trainer(const Trainer &) = delete;
    Trainer &operator=(const Trainer &) = delete;
    ~Trainer() { moth_trainer_free(raw_); }

    /// One step on (x, y); the batch loss before the update.
    double step(const Tensor &x, const Tensor &y) {
        double loss = 0;
        check(moth_trainer_step(live(), x.get(), y.get(), &loss));
        return loss;
    }
    uint64_t steps() const {
        uint64_t n = 0;
        check(moth_trainer_steps(live(), &n));
        return n;
    }
    void save(const std::string &path) const { check(moth_trainer_save(live(), path.c_str())); }
    std::vector<uint8_t> to_bytes() const {
        moth_buffer *b = nullptr;
        check(moth_trainer_to_buffer(live(), &b));
        const uint8_t *data = nullptr;
        size_t len = 0;
        moth_status st = moth_buffer_data(b, &data, &len);
        std::vector<uint8_t> out;
        if (st == MOTH_STATUS_OK) out.assign(data, data + len);
        moth_buffer_free(b);
        check(st);
        return out;
    }

  private:
    explicit Trainer(moth_trainer *raw) noexcept : raw_(raw) {}
    moth_trainer *live() const { return detail::live(raw_, "Trainer"); }
    moth_trainer *raw_ = nullptr;
};

} // namespace moth

#endif // MOTH_TRAINER_HPP
