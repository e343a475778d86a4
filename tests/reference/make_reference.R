# Reference results from R for tests/test_stats_reference.py (the way statsmodels stores R output).
#
# Reads the fixed inputs written by make_inputs.py (synapse_input.csv, terminal_images_input.csv,
# terminal_cells_input.csv) and writes one CSV per model:
#   ref_lmm_fixef.csv       longitudinal mixed model: cell means, SE (lme4)
#   ref_lmm_varcorr.csv     its variance components
#   ref_lmm_contrasts.csv   change from baseline, versus vehicle (difference in differences) and the
#                           mechanism interactions (emmeans on the lmerTest fit): estimate, SE, and
#                           t intervals / p values with our df rule (animals minus groups, fixed)
#                           next to lmerTest's Satterthwaite and pbkrtest's Kenward-Roger df
#   ref_glm_contrasts.csv   quasi-Poisson rate ratios versus vehicle (glm(family = quasipoisson))
#   ref_glm_dispersion.csv  their Pearson dispersion and over-dispersion test
#   ref_lm_contrasts.csv    OLS of animal means of log skeleton length (lm), ratio versus vehicle
#   ref_trend.csv           the dose x time trend mixed model (trend.py), both random-effect structures,
#                           t with trend.py's df rule (animals minus between-animal fixed effects)
#                           next to Wald z and lmerTest's Satterthwaite
#   ref_dose_trend.csv      the log-linear dose trend test of fit_dose_response (lm)
#
# Run from this folder:  Rscript make_reference.R
# Written with R 4.2.2, lme4 1.1-31, lmerTest 3.1-3, emmeans 1.8.4-1, pbkrtest 0.5.2 (Debian bookworm).
# Nothing here is needed at test time.

suppressMessages({
  library(lme4)
  library(lmerTest)
  library(emmeans)
})
emm_options(msg.interaction = FALSE)
has_kr <- requireNamespace("pbkrtest", quietly = TRUE)
options(digits = 15)
out <- function(x, f) write.csv(x, f, row.names = FALSE)
level <- 0.95
ctrl <- lmerControl(optimizer = "bobyqa", optCtrl = list(maxfun = 1e5), check.conv.singular = "ignore")

keycols <- c("genotype", "compound", "dose_mg_kg", "treatment_days")
cellname <- function(d) paste(d$genotype, d$compound, d$dose_mg_kg, d$treatment_days, d$day, sep = "|")

# ---------------------------------------------------------------- longitudinal mixed model
syn <- read.csv("synapse_input.csv", stringsAsFactors = FALSE)
stopifnot(all(syn$puncta_density_per_100um2 > 0))
syn$log_value <- log(syn$puncta_density_per_100um2)
syn$cell <- factor(cellname(syn))
syn$animal_id <- factor(syn$animal_id)
syn$session <- factor(paste(syn$animal_id, syn$day))
lmm <- lmerTest::lmer(log_value ~ 0 + cell + (1 | animal_id) + (1 | session), data = syn, REML = TRUE,
                      control = ctrl)
fe <- fixef(lmm)
out(data.frame(cell = sub("^cell", "", names(fe)), estimate = unname(fe), se = sqrt(diag(as.matrix(vcov(lmm))))),
    "ref_lmm_fixef.csv")
vc <- as.data.frame(VarCorr(lmm))
out(data.frame(component = vc$grp, variance = vc$vcov), "ref_lmm_varcorr.csv")

groups <- unique(syn[, keycols])
n_groups <- nrow(groups)
df_rule <- length(unique(syn$animal_id)) - n_groups  # our rule: animals minus groups
cells <- levels(syn$cell)
vec <- function(terms) {  # terms: list of (cell name, weight)
  v <- setNames(numeric(length(cells)), cells)
  for (t in terms) {
    stopifnot(t[[1]] %in% cells)
    v[t[[1]]] <- v[t[[1]]] + t[[2]]
  }
  v
}
gcell <- function(g, day) paste(g$genotype, g$compound, g$dose_mg_kg, g$treatment_days, day, sep = "|")
days_of <- function(g) sort(unique(syn$day[syn$genotype == g$genotype & syn$compound == g$compound &
                                             syn$dose_mg_kg == g$dose_mg_kg & syn$treatment_days == g$treatment_days]))
vehicle_of <- function(g) {
  v <- groups[groups$genotype == g$genotype & groups$compound == "vehicle" & groups$treatment_days == g$treatment_days, ]
  if (nrow(v) == 1) v else NULL
}
change <- function(g, day, sign = 1) {  # change from the group's own baseline (first session)
  list(list(gcell(g, day), sign), list(gcell(g, min(days_of(g))), -sign))
}

L <- list()
meta <- list()
add <- function(name, terms, info) {
  L[[name]] <<- vec(terms)
  meta[[name]] <<- info
}
for (i in seq_len(n_groups)) {
  g <- groups[i, ]
  dd <- days_of(g)
  for (day in dd[-1]) {
    info <- data.frame(contrast = "change_from_baseline", g, day = day)
    add(paste("change", gcell(g, day)), change(g, day), info)
    v <- vehicle_of(g)
    if (g$compound != "vehicle" && !is.null(v) && day %in% days_of(v)) {
      info$contrast <- "vs_vehicle"
      add(paste("vs_vehicle", gcell(g, day)), c(change(g, day), change(v, day, -1)), info)
    }
  }
}
# mechanism: (a - vehicle_a) - (b - vehicle_b), each a change from its own baseline, at day 7
find <- function(gt, cp, dose, td) groups[groups$genotype == gt & groups$compound == cp &
                                            groups$dose_mg_kg == dose & groups$treatment_days == td, ]
wt_dzp <- find("WT", "diazepam", 5, 7); wt_veh <- find("WT", "vehicle", 0, 7)
ko_dzp <- find("TSPO_KO", "diazepam", 5, 7); ko_veh <- find("TSPO_KO", "vehicle", 0, 7)
xbd <- find("WT", "XBD173", 10, 7)
add("mechanism interaction", c(change(ko_dzp, 7), change(ko_veh, 7, -1), change(wt_dzp, 7, -1), change(wt_veh, 7)),
    data.frame(contrast = "mechanism_interaction", ko_dzp, day = 7))
add("mechanism compound", c(change(xbd, 7), change(wt_veh, 7, -1), change(wt_dzp, 7, -1), change(wt_veh, 7)),
    data.frame(contrast = "mechanism_compound", xbd, day = 7))

emm <- emmeans(lmm, ~cell, lmer.df = "satterthwaite")
con <- contrast(emm, method = L, adjust = "none")
satt <- summary(con, infer = TRUE, level = level)
rule <- summary(con, infer = TRUE, level = level, df = df_rule)  # same estimates and SEs, our df
res <- do.call(rbind, meta)
res$estimate <- rule$estimate
res$se <- rule$SE
res$df <- rule$df
res$ci_low <- rule$lower.CL
res$ci_high <- rule$upper.CL
res$p_value <- rule$p.value
res$df_satterthwaite <- satt$df
res$ci_low_satterthwaite <- satt$lower.CL
res$ci_high_satterthwaite <- satt$upper.CL
res$p_value_satterthwaite <- satt$p.value
if (has_kr) {
  kr <- summary(contrast(emmeans(lmm, ~cell, lmer.df = "kenward-roger"), method = L, adjust = "none"),
                infer = TRUE, level = level)
  res$se_kenward_roger <- kr$SE
  res$df_kenward_roger <- kr$df
  res$p_value_kenward_roger <- kr$p.value
}
# planned family: each treated group versus its vehicle at the end of dosing, Holm-adjusted
planned <- res$contrast == "vs_vehicle" & res$day == res$treatment_days
res$p_holm <- NA_real_
res$p_holm[planned] <- p.adjust(res$p_value[planned], method = "holm")
# Cohen's d scale: SD of one animal's session mean (animal + session + residual / fields)
fields <- mean(table(droplevels(syn$session)))
vcs <- setNames(vc$vcov, vc$grp)
res$sd_animal_log <- sqrt(vcs["animal_id"] + vcs["session"] + vcs["Residual"] / fields)
out(res, "ref_lmm_contrasts.csv")

# ---------------------------------------------------------------- terminal endpoints, per animal
img <- read.csv("terminal_images_input.csv", stringsAsFactors = FALSE)
cl <- merge(read.csv("terminal_cells_input.csv", stringsAsFactors = FALSE), img, by = "image_id")
per_animal <- function(d, value, exposure) {
  a <- aggregate(cbind(total = d[[value]], exposure = exposure) ~ animal_id + genotype + compound + dose_mg_kg +
                   treatment_days + day, data = cbind(d, exposure = exposure), FUN = sum)
  a$cell <- factor(cellname(a))
  a
}
vs_vehicle <- function(a) {  # each treated cell minus the vehicle cell of its genotype, duration and day
  cs <- unique(a[, c(keycols, "day", "cell")])
  Lv <- list(); info <- list()
  for (i in seq_len(nrow(cs))) {
    r <- cs[i, ]
    if (r$compound == "vehicle") next
    v <- cs[cs$genotype == r$genotype & cs$compound == "vehicle" & cs$treatment_days == r$treatment_days &
              cs$day == r$day, ]
    if (nrow(v) != 1) next
    w <- setNames(numeric(nlevels(a$cell)), levels(a$cell))
    w[as.character(r$cell)] <- 1
    w[as.character(v$cell)] <- -1
    Lv[[as.character(r$cell)]] <- w
    info[[as.character(r$cell)]] <- r[, c(keycols, "day")]
  }
  list(L = Lv, info = do.call(rbind, info))
}
tidy <- function(s, info, endpoint, df_used) {
  d <- data.frame(endpoint = endpoint, info, log_ratio = s$estimate, se = s$SE, df = df_used,
                  ratio = exp(s$estimate), ci_low = exp(s$lower.CL), ci_high = exp(s$upper.CL), p_value = s$p.value)
  planned <- d$day == d$treatment_days
  d$p_holm <- NA_real_
  d$p_holm[planned] <- p.adjust(d$p_value[planned], method = "holm")
  d
}

glm_rows <- list(); disp_rows <- list()
for (ep in c("microglia_density", "engulfed_per_cell")) {
  a <- if (ep == "microglia_density") per_animal(img, "microglia_count", img$field_area_mm2)
       else per_animal(cl, "engulfed_puncta", rep(1, nrow(cl)))
  fit <- glm(total ~ 0 + cell + offset(log(exposure)), family = quasipoisson, data = a)
  cv <- vs_vehicle(a)
  # t on the residual df, as in summary.glm for quasi families (emmeans would default to z here)
  s <- summary(contrast(emmeans(fit, ~cell), method = cv$L, adjust = "none"), infer = TRUE, level = level,
               df = fit$df.residual)
  # the contrast of two cell coefficients does not involve the offset: check emmeans against coef()
  stopifnot(isTRUE(all.equal(unname(s$estimate), unname(sapply(cv$L, function(w) sum(w * coef(fit)))),
                             tolerance = 1e-10)))
  glm_rows[[ep]] <- tidy(s, cv$info, ep, fit$df.residual)
  x2 <- sum(residuals(fit, type = "pearson")^2)
  disp_rows[[ep]] <- data.frame(endpoint = ep, dispersion = summary(fit)$dispersion, pearson_chi2 = x2,
                                df_resid = fit$df.residual,
                                p_overdispersion = pchisq(x2, fit$df.residual, lower.tail = FALSE),
                                n_animals = nrow(a))
}
out(do.call(rbind, glm_rows), "ref_glm_contrasts.csv")
out(do.call(rbind, disp_rows), "ref_glm_dispersion.csv")

# OLS: one value per animal, the mean of log skeleton length over its cells
cl$log_value <- log(cl$skeleton_length_um)
am <- aggregate(log_value ~ animal_id + genotype + compound + dose_mg_kg + treatment_days + day, data = cl, FUN = mean)
am$cell <- factor(cellname(am))
ols <- lm(log_value ~ 0 + cell, data = am)
cv <- vs_vehicle(am)
s <- summary(contrast(emmeans(ols, ~cell), method = cv$L, adjust = "none"), infer = TRUE, level = level)
lmr <- tidy(s, cv$info, "skeleton_length", ols$df.residual)
lmr$effect_size_d <- lmr$log_ratio / sigma(ols)
lmr$sigma <- sigma(ols)
out(lmr, "ref_lm_contrasts.csv")

# ---------------------------------------------------------------- dose x time trend (trend.py)
tr <- syn[syn$genotype == "WT" & syn$compound %in% c("vehicle", "diazepam"), ]
tr$weeks <- tr$day / 7
tr$dose <- log2(1 + tr$dose_mg_kg)
tr$on <- pmin(pmax(tr$day, 0), tr$treatment_days) / 7
tr$off <- pmax(tr$day - tr$treatment_days, 0) / 7
tr$treatment_days <- factor(tr$treatment_days)
form <- log_value ~ treatment_days * weeks + dose + dose:on + dose:off + dose:on:off
base <- lmerTest::lmer(update(form, . ~ . + (1 | animal_id) + (1 | session)), data = tr, REML = TRUE, control = ctrl)
slope <- lmerTest::lmer(update(form, . ~ . + (1 + weeks | animal_id) + (1 | session)), data = tr, REML = TRUE,
                        control = ctrl)
lrt <- max(2 * (as.numeric(logLik(slope)) - as.numeric(logLik(base))), 0)
p_lrt <- 0.5 * pchisq(lrt, 1, lower.tail = FALSE) + 0.5 * pchisq(lrt, 2, lower.tail = FALSE)
terms <- c("dose", "dose:on", "dose:off", "dose:on:off")
trend_rows <- list()
for (nm in c("intercepts", "slope")) {
  m <- if (nm == "slope") slope else base
  cf <- summary(m, ddf = "Satterthwaite")$coefficients
  est <- fixef(m)[terms]
  se <- sqrt(diag(as.matrix(vcov(m))))[terms]
  # trend.py's df: animals minus the fixed-effect columns that are constant within every animal
  X <- model.matrix(m)
  between <- sum(apply(X, 2, function(col) all(tapply(col, droplevels(tr$animal_id), function(v) length(unique(v)) == 1))))
  df_rule <- length(unique(tr$animal_id)) - between
  q <- qt(1 - (1 - level) / 2, df_rule)
  trend_rows[[nm]] <- data.frame(random_effects = nm, term = terms, estimate = unname(est), se = unname(se),
                                 df = df_rule, ci_low = unname(est - q * se), ci_high = unname(est + q * se),
                                 p_value = unname(2 * pt(-abs(est / se), df_rule)),
                                 p_value_wald_z = unname(2 * pnorm(-abs(est / se))),
                                 df_satterthwaite = unname(cf[terms, "df"]),
                                 p_value_satterthwaite = unname(cf[terms, "Pr(>|t|)"]),
                                 lrt_stat = lrt, lrt_p = p_lrt, n_animals = length(unique(tr$animal_id)),
                                 n_images = nrow(tr), singular = isSingular(m))
}
out(do.call(rbind, trend_rows), "ref_trend.csv")

# ---------------------------------------------------------------- log-linear dose trend (fit_dose_response)
sm <- aggregate(puncta_density_per_100um2 ~ animal_id + genotype + compound + dose_mg_kg + treatment_days + day,
                data = syn, FUN = mean)
first <- do.call(rbind, lapply(split(sm, sm$animal_id), function(s) s[which.min(s$day), c("animal_id", "puncta_density_per_100um2")]))
names(first)[2] <- "baseline"
end <- merge(sm[sm$day == sm$treatment_days, ], first, by = "animal_id")
end$log_ratio <- log(end$puncta_density_per_100um2 / end$baseline)
dr <- end[end$genotype == "WT" & end$treatment_days == 7 & end$compound %in% c("vehicle", "diazepam"), ]
d0 <- min(dr$dose_mg_kg[dr$dose_mg_kg > 0]) / 2
fit <- lm(log_ratio ~ log(dose_mg_kg + d0), data = dr)
ci <- confint(fit, level = level)[2, ]
co <- summary(fit)$coefficients[2, ]
out(data.frame(parameter = "trend_slope", estimate = co[["Estimate"]], se = co[["Std. Error"]], ci_low = ci[[1]],
               ci_high = ci[[2]], p_value = co[["Pr(>|t|)"]], df = fit$df.residual, n_animals = nrow(dr)),
    "ref_dose_trend.csv")

versions <- data.frame(package = c("R", "lme4", "lmerTest", "emmeans", "pbkrtest", "Matrix"),
                       version = c(paste(R.version$major, R.version$minor, sep = "."),
                                   sapply(c("lme4", "lmerTest", "emmeans", "pbkrtest", "Matrix"), function(p)
                                     tryCatch(as.character(packageVersion(p)), error = function(e) NA))))
out(versions, "ref_versions.csv")
