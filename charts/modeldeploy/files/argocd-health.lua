-- Argo CD health check for modeldeploy.dev/ModelDeployment.
-- Install as the value of `resource.customizations.health.modeldeploy.dev_ModelDeployment`
-- in the argocd-cm ConfigMap. Argo CD sets the global `obj` and expects a table
-- {status = "Healthy" | "Progressing" | "Degraded", message = "..."} back.
--
-- Rules, in order:
--   1. no status yet, or status.observedGeneration < metadata.generation
--        -> Progressing ("waiting for the operator to observe generation N")
--   2. Ready, ModelSourceReady, StableReady or RoutingReady is False with a hard-failure
--      reason (below); or CanaryReady is, while spec.canary.trafficPercent > 0
--        -> Degraded, with that condition's reason and message
--   3. a rollout (status.rollout, with spec.rollout) that is Paused -> Suspended; RolledBack ->
--      Degraded (the failed version is named; stable still serves); Progressing -> Progressing
--      (the step and what the analysis said); a Healthy rollout goes on to rule 4
--   4. Ready is True -> Healthy (message: traffic split and URL)
--   5. anything else (Ready False with a transient reason, Unknown, or missing)
--        -> Progressing, with Ready's reason and message
--
-- Hard failures are reasons that will not fix themselves by waiting: a person has to change
-- the resource, the model, the claim or the cluster. Everything else (pods starting, a claim
-- waiting for its first consumer, a rollout in progress, a pod the cluster autoscaler may
-- still place, an API error the operator retries) stays Progressing, so Argo CD raises no
-- alarm during a normal rollout. A canary rolled back to 0% of the traffic and kept for a look
-- does not degrade the resource, just as it does not hold the operator's Ready back.
local HARD_FAILURES = {
  -- the model source
  ClaimNotFound = true,              -- the PersistentVolumeClaim named in spec does not exist
  ClaimLost = true,                  -- the claim lost its volume
  -- the serving pods
  ServerTerminated = true,           -- the server exited; the message is its load error
                                     -- (missing file, sha256 mismatch, invalid model)
  CrashLoopBackOff = true,           -- the server keeps restarting
  ImagePullBackOff = true,           -- the serving image cannot be pulled
  ErrImagePull = true,
  InvalidImageName = true,
  CreateContainerConfigError = true, -- e.g. a missing ConfigMap or Secret
  CreateContainerError = true,
  RunContainerError = true,
  -- the rollout
  ProgressDeadlineExceeded = true,   -- the Deployment cannot progress
  ReplicaFailure = true,             -- the ReplicaSet cannot create pods (quota, admission)
  -- the resource itself
  InvalidSpec = true,                -- the stored spec is one the operator cannot use
}

local PARTS = { "ModelSourceReady", "StableReady", "CanaryReady", "RoutingReady" }

local function canary_wants_traffic(resource)
  local canary = resource.spec ~= nil and resource.spec.canary or nil
  return canary ~= nil and canary.trafficPercent ~= nil and canary.trafficPercent > 0
end

local function find_condition(conditions, wanted)
  if conditions == nil then
    return nil
  end
  for _, condition in ipairs(conditions) do
    if condition.type == wanted then
      return condition
    end
  end
  return nil
end

local function describe(condition, prefix)
  local text = prefix .. (condition.reason or "NoReason")
  if condition.message ~= nil and condition.message ~= "" then
    text = text .. ": " .. condition.message
  end
  return text
end

local function is_hard_failure(condition)
  return condition ~= nil and condition.status == "False" and HARD_FAILURES[condition.reason] == true
end

local function traffic_summary(status)
  local parts = {}
  if status.traffic ~= nil then
    local stable = status.traffic.stable or 0
    local canary = status.traffic.canary or 0
    table.insert(parts, "traffic " .. stable .. "/" .. canary .. " (stable/canary)")
  end
  if status.url ~= nil and status.url ~= "" then
    table.insert(parts, status.url)
  end
  return table.concat(parts, ", ")
end

local function assess(resource)
  local hs = {}
  local generation = 0
  if resource.metadata ~= nil and resource.metadata.generation ~= nil then
    generation = resource.metadata.generation
  end
  local status = resource.status
  if status == nil or status.observedGeneration == nil or status.observedGeneration < generation then
    hs.status = "Progressing"
    hs.message = "waiting for the operator to observe generation " .. generation
    return hs
  end

  local conditions = status.conditions
  local ready = find_condition(conditions, "Ready")
  if is_hard_failure(ready) then
    hs.status = "Degraded"
    hs.message = describe(ready, "")
    return hs
  end
  for _, part in ipairs(PARTS) do
    local condition = find_condition(conditions, part)
    local counts = part ~= "CanaryReady" or canary_wants_traffic(resource)
    if counts and is_hard_failure(condition) then
      hs.status = "Degraded"
      hs.message = describe(condition, part .. " ")
      return hs
    end
  end

  local rollout = status.rollout
  if rollout ~= nil and rollout.phase ~= nil and rollout.phase ~= "Healthy" then
    local text = rollout.message
    if text == nil or text == "" then
      text = "rollout " .. rollout.phase
    end
    if rollout.phase == "Paused" then
      hs.status = "Suspended"
    elseif rollout.phase == "RolledBack" then
      hs.status = "Degraded"
    else
      hs.status = "Progressing"
      if rollout.stepSummary ~= nil then
        text = "rollout step " .. rollout.stepSummary .. ": " .. text
      end
    end
    hs.message = text
    return hs
  end

  if ready ~= nil and ready.status == "True" then
    hs.status = "Healthy"
    local summary = traffic_summary(status)
    if summary ~= "" then
      hs.message = "Ready: " .. summary
    else
      hs.message = "Ready"
    end
    return hs
  end

  hs.status = "Progressing"
  if ready == nil then
    hs.message = "waiting for the Ready condition"
  else
    hs.message = describe(ready, "")
  end
  return hs
end

return assess(obj)
