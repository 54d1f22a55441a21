-- Argo CD health check for the tinystacks.io kinds: AwsAccountLink, Stack, Database, Bastion.
--
-- The operator reports kstatus conditions (Ready, Reconciling, Stalled) and
-- status.observedGeneration; this maps them onto Argo CD's health states:
--   being deleted                      Progressing (the AWS side goes first, then the finalizer)
--   annotation tinystacks.io/paused    Suspended   (no AWS call is made until it is removed)
--   generation not yet observed        Progressing
--   Stalled=True                       Degraded    (a person must act; the message says what)
--   Ready=False AwaitingApproval       Suspended   (changePolicy Manual: the plan in status.plan
--                                                   waits for spec.approvedPlan; nothing is wrong)
--   Ready=False Drifted                Degraded    (management ObserveOnly: AWS differs from the
--                                                   spec and the operator will not repair it)
--   Ready=True                         Healthy
--   anything else                      Progressing (Reconciling=True, or not reconciled yet)
--
-- Argo CD runs health checks in gopher-lua with only the base, table and package libraries
-- (no string or math library), so this script uses nothing else.

local hs = {}

local function condition(conditionType)
  if obj.status == nil or obj.status.conditions == nil then
    return nil
  end
  for _, c in ipairs(obj.status.conditions) do
    if c.type == conditionType then
      return c
    end
  end
  return nil
end

local function describe(c)
  if c.message ~= nil and c.message ~= "" then
    return c.reason .. ": " .. c.message
  end
  return c.reason
end

local ready = condition("Ready")
local stalled = condition("Stalled")
local reconciling = condition("Reconciling")

if obj.metadata.deletionTimestamp ~= nil then
  hs.status = "Progressing"
  hs.message = "Deleting: the operator removes the AWS side before it releases the object"
  if ready ~= nil and ready.status ~= "True" then
    hs.message = hs.message .. " (" .. describe(ready) .. ")"
  end
  return hs
end

local annotations = obj.metadata.annotations
if (annotations ~= nil and annotations["tinystacks.io/paused"] == "true")
    or (ready ~= nil and ready.reason == "Paused") then
  hs.status = "Suspended"
  hs.message = "Paused by the annotation tinystacks.io/paused: no AWS call is made until it is removed"
  -- The operator's own message says when a spec change waits, not applied, for the pause to end.
  if ready ~= nil and ready.reason == "Paused" and ready.message ~= nil and ready.message ~= "" then
    hs.message = ready.message
  end
  return hs
end

local observed = nil
if obj.status ~= nil then
  observed = obj.status.observedGeneration
end
if observed == nil or (obj.metadata.generation ~= nil and observed ~= obj.metadata.generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. tostring(obj.metadata.generation)
  return hs
end

if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = describe(stalled)
  return hs
end

-- Held: neither Reconciling nor Stalled, and nothing happens until a person acts. A plan waiting
-- for approval is the normal state of a Manual object between two changes, not a fault.
if ready ~= nil and ready.status == "False" and ready.reason == "AwaitingApproval" then
  hs.status = "Suspended"
  hs.message = describe(ready)
  return hs
end
if ready ~= nil and ready.status == "False" and ready.reason == "Drifted" then
  hs.status = "Degraded"
  hs.message = describe(ready)
  return hs
end

if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = describe(ready)
  return hs
end

hs.status = "Progressing"
if reconciling ~= nil and reconciling.status == "True" then
  hs.message = describe(reconciling)
elseif ready ~= nil then
  hs.message = describe(ready)
else
  hs.message = "Waiting for the operator to report conditions"
end
return hs
