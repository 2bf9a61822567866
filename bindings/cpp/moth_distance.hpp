// moth_distance.hpp: class distances in the C++ wrapper (included by
// moth.hpp; include that). A protocol, one measurement call, its result.
#ifndef MOTH_DISTANCE_HPP
#define MOTH_DISTANCE_HPP

#include "moth.hpp"

namespace moth {

/// A distance protocol: a preset ("quick", "confirm", "paper") with
/// overrides, as `moth distance --protocol NAME --samples --steps --seeds`.
class DistanceConfig {
  public:
    explicit DistanceConfig(const std::string &preset = "quick") {
        check(moth_distance_config_new(preset.c_str(), &raw_));
    }
    DistanceConfig(DistanceConfig &&o) noexcept : raw_(std::exchange(o.raw_, nullptr)) {}
    DistanceConfig &operator=(DistanceConfig &&o) noexcept {
        std::swap(raw_, o.raw_);
        return *this;
    }
    DistanceConfig(const DistanceConfig &) = delete;
    DistanceConfig &operator=(const DistanceConfig &) = delete;
    ~DistanceConfig() { moth_distance_config_free(raw_); }

    DistanceConfig &samples(size_t n) {
        check(moth_distance_config_set_samples(live(), n));
        return *this;
    }
    DistanceConfig &steps(size_t n) {
        check(moth_distance_config_set_steps(live(), n));
        return *this;
    }
    DistanceConfig &seeds(const std::vector<uint64_t> &s) {
        check(moth_distance_config_set_seeds(live(), s.data(), s.size()));
        return *this;
    }
    DistanceConfig &init_cost(double v) {
        check(moth_distance_config_set_init_cost(live(), v));
        return *this;
    }
    DistanceConfig &asr_bound(double v) {
        check(moth_distance_config_set_asr_bound(live(), v));
        return *this;
    }
    DistanceConfig &set_json(const std::string &json) {
        check(moth_distance_config_set_json(live(), json.c_str()));
        return *this;
    }
    std::string to_json() const {
        const moth_distance_config *c = live();
        return detail::read_string(
            [c](char *b, size_t l, size_t *n) { return moth_distance_config_to_json(c, b, l, n); });
    }
    const moth_distance_config *get() const noexcept { return raw_; }

  private:
    moth_distance_config *live() const { return detail::live(raw_, "DistanceConfig"); }
    moth_distance_config *raw_ = nullptr;
};

/// A measured matrix with the trigger of every direction that reached the
/// ASR bound.
class Distances {
  public:
    explicit Distances(moth_distance_result *raw) noexcept : raw_(raw) {}
    Distances(Distances &&o) noexcept : raw_(std::exchange(o.raw_, nullptr)) {}
    Distances &operator=(Distances &&o) noexcept {
        std::swap(raw_, o.raw_);
        return *this;
    }
    Distances(const Distances &) = delete;
    Distances &operator=(const Distances &) = delete;
    ~Distances() { moth_distance_result_free(raw_); }

    size_t num_classes() const {
        size_t n = 0;
        check(moth_distance_result_num_classes(live(), &n));
        return n;
    }
    /// N*N values, row-major: [a * N + b] is the distance a -> b.
    std::vector<double> matrix() const {
        size_t n = num_classes();
        std::vector<double> m(n * n);
        check(moth_distance_result_matrix(raw_, m.data(), m.size()));
        return m;
    }
    /// The trigger of a -> b: mask [H*W] and pattern [C*H*W]; empty when
    /// the pair was not measured or never reached the bound.
    struct Trigger {
        std::vector<float> mask, pattern;
    };
    std::optional<Trigger> trigger(size_t a, size_t b) const {
        int64_t c = 0, h = 0, w = 0;
        check(moth_distance_result_input_shape(live(), &c, &h, &w));
        Trigger t{std::vector<float>(size_t(h * w)), std::vector<float>(size_t(c * h * w))};
        bool found = false;
        check(moth_distance_result_trigger(raw_, a, b, t.mask.data(), t.mask.size(),
                                           t.pattern.data(), t.pattern.size(), &found));
        if (!found) return std::nullopt;
        return t;
    }
    /// The result as `moth distance`'s distances.json.
    std::string to_json() const {
        const moth_distance_result *r = live();
        return detail::read_string(
            [r](char *b, size_t l, size_t *n) { return moth_distance_result_to_json(r, b, l, n); });
    }

  private:
    moth_distance_result *live() const { return detail::live(raw_, "Distances"); }
    moth_distance_result *raw_ = nullptr;
};

/// Called after each source class with (pairs done, total); return false
/// to stop (the measurement then throws moth::Error with
/// MOTH_STATUS_CANCELLED).
using DistanceProgress = std::function<bool(size_t done, size_t total)>;

/// Measures class distances of `model` on `images` [n, C, H, W] with
/// `labels` [n] (see moth_distance_measure); `pairs` empty: all.
inline Distances measure_distances(Classifier &model, const DistanceConfig &config,
                                   const Tensor &images, const Tensor &labels,
                                   size_t num_classes,
                                   const std::vector<std::pair<size_t, size_t>> &pairs = {},
                                   DistanceProgress progress = {}) {
    std::vector<size_t> flat;
    for (const auto &p : pairs) {
        flat.push_back(p.first);
        flat.push_back(p.second);
    }
    struct Hook {
        static int32_t call(void *user, size_t done, size_t total) noexcept {
            try {
                return (*static_cast<DistanceProgress *>(user))(done, total) ? 0 : 1;
            } catch (...) {
                return 1;
            }
        }
    };
    moth_distance_result *raw = nullptr;
    check(moth_distance_measure(model.get(), config.get(), images.get(), labels.get(),
                                num_classes, flat.empty() ? nullptr : flat.data(), pairs.size(),
                                progress ? &Hook::call : nullptr, &progress, &raw));
    return Distances(raw);
}

} // namespace moth

#endif // MOTH_DISTANCE_HPP
