-- Argo CD health check for quanttrain.io/MLTrainingJob.
--
-- Succeeded is Healthy and Failed is Degraded; both are terminal, so they win
-- over everything else.  A running job whose spec change the operator rejected
-- (the SpecChangeRejected condition) is Degraded.  A suspended job (the
-- Suspended condition, or spec.runPolicy.suspend while a queue such as Kueue
-- keeps it waiting) is Suspended.  Pending, Running and a job the operator has not
-- seen yet are Progressing.

local function find_condition(status, condition_type)
  if status == nil or status.conditions == nil then
    return nil
  end
  for _, condition in ipairs(status.conditions) do
    if condition.type == condition_type then
      return condition
    end
  end
  return nil
end

local function metric_text(evaluation)
  if evaluation == nil or type(evaluation.accuracy) ~= "number" then
    return ""
  end
  local text = string.format(": accuracy %.4f", evaluation.accuracy)
  if type(evaluation.f1Score) == "number" then
    text = text .. string.format(", F1 %.4f", evaluation.f1Score)
  end
  return text
end

local function failure_message(status)
  if status.message ~= nil and status.message ~= "" then
    return status.message
  end
  local failed = find_condition(status, "Failed")
  if failed ~= nil and failed.message ~= nil and failed.message ~= "" then
    return failed.message
  end
  return "Training failed"
end

local function is_suspended(job)
  local condition = find_condition(job.status, "Suspended")
  if condition ~= nil and condition.status == "True" then
    return true, condition.message
  end
  local run_policy = (job.spec or {}).runPolicy or {}
  return run_policy.suspend == true, nil
end

local function health(job)
  local status = job.status or {}
  local phase = status.phase

  if phase == "Succeeded" then
    return { status = "Healthy", message = "Training succeeded" .. metric_text(status.evaluation) }
  end
  if phase == "Failed" then
    return { status = "Degraded", message = failure_message(status) }
  end

  -- The operator keeps running the launched spec and ignores the change, so
  -- the user has to revert it or re-create the job.
  local rejected = find_condition(status, "SpecChangeRejected")
  if rejected ~= nil and rejected.status == "True" then
    return { status = "Degraded", message = rejected.message or "Spec change rejected" }
  end

  local suspended, suspended_message = is_suspended(job)
  if suspended then
    return { status = "Suspended", message = suspended_message or "Job is suspended (spec.runPolicy.suspend)" }
  end

  if phase == nil or phase == "" then
    return { status = "Progressing", message = "Waiting for the operator to pick up the job" }
  end
  if phase == "Pending" or phase == "Running" then
    local message = status.message
    local running = find_condition(status, "Running")
    if (message == nil or message == "") and phase == "Running" and running ~= nil then
      message = running.message
    end
    if message == nil or message == "" then
      message = "Job is " .. phase
    end
    return { status = "Progressing", message = message }
  end
  return { status = "Unknown", message = "Unknown phase " .. tostring(phase) }
end

return health(obj)
