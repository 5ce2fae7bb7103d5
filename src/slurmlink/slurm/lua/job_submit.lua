--[[
job_submit.lua -- slurmlink's bank check for Slurm's job_submit/lua plugin (JobSubmitPlugins=lua).

At every submission slurmctld runs slurm_job_submit with its job lock held, so nothing here may wait on
the network. The job's fields go to the local slurmlink gateway over a Unix socket (a sub-millisecond
round trip, one attempt, hard deadline SYNC_TIMEOUT), which prices the job with the bank's current rate
card and compares it with the account's balance from its in-memory copy of the bank. This script adds
what only slurmctld knows: what the account's pending jobs may still spend (each accepted job carries its
estimate in its AdminComment, which users cannot change) plus the jobs accepted in the last moments that
slurm.jobs does not show yet.

A job over budget is rejected with the gateway's message, which sbatch prints ("sbatch: error: ...").
If the gateway cannot be asked, ON_UNREACHABLE decides ("allow": the hold placed when the job starts still
keeps the account from being overdrawn; "deny"). Lua 5.1; nothing is passed to a shell.
--]]

local SOCKET_PATH = @SOCKET_PATH@
local SYNC_TIMEOUT = @SYNC_TIMEOUT@
local CONNECT_RETRY = @CONNECT_RETRY@
local ON_UNREACHABLE = @ON_UNREACHABLE@
@GATEWAY_CLIENT@

local SYNC = true
local JOB_PENDING = 0
local TAG = "slurmlink-bank:estimate="
-- TAG as a Lua pattern ("-" is a quantifier there).
local TAG_PATTERN = "slurmlink%-bank:estimate="
-- Seconds an accepted job's estimate is counted from memory before slurm.jobs is expected to show it.
local RECENT_SECONDS = 30

-- Survives between calls: slurmctld keeps this Lua state until the file changes.
recent_accepts = recent_accepts or {}

local function estimate_of(comment)
	if comment == nil then
		return nil
	end
	local value = string.match(tostring(comment), TAG_PATTERN .. "([%d%.]+)")
	return tonumber(value)
end

local function with_estimate(comment, per_task)
	local base = ""
	if comment ~= nil then
		base = string.gsub(tostring(comment), "%s*" .. TAG_PATTERN .. "[%d%.]+", "")
	end
	if base ~= "" then
		base = base .. " "
	end
	return base .. TAG .. per_task
end

-- What the account's pending jobs (all but skip_job) may still spend, plus the jobs accepted moments
-- ago that slurm.jobs does not show yet. An accepted job that shows up (same account and estimate,
-- submitted at or after its acceptance) is counted once, from slurm.jobs.
local function pending_exposure(account, skip_job)
	local total = 0
	local oldest = nil
	for _, accepted in ipairs(recent_accepts) do
		if oldest == nil or accepted.time < oldest then
			oldest = accepted.time
		end
	end
	local shown = {}
	if type(slurm.jobs) == "table" then
		for _, job in pairs(slurm.jobs) do
			if job.account == account and job.job_id ~= skip_job then
				local per_task = estimate_of(job.admin_comment)
				if per_task and (tonumber(job.job_state) or -1) % 256 == JOB_PENDING then
					local tasks = tonumber(job.array_task_cnt) or 1
					if tasks < 1 then
						tasks = 1
					end
					total = total + per_task * tasks
				end
				local submitted = tonumber(job.submit_time) or 0
				if per_task and oldest ~= nil and submitted >= oldest then
					local key = tostring(per_task)
					shown[key] = shown[key] or {}
					table.insert(shown[key], submitted)
				end
			end
		end
	end
	local now = os.time()
	local kept = {}
	for _, accepted in ipairs(recent_accepts) do
		local seen = false
		local times = shown[tostring(tonumber(accepted.per_task))]
		if accepted.account == account and times then
			for i, submitted in ipairs(times) do
				if submitted >= accepted.time then
					table.remove(times, i)
					seen = true
					break
				end
			end
		end
		if not seen and now - accepted.time <= RECENT_SECONDS then
			kept[#kept + 1] = accepted
			if accepted.account == account then
				total = total + accepted.amount
			end
		end
	end
	recent_accepts = kept
	return total
end

-- Slurm hands unset strings over as nil or "".
local function given(value)
	if value == nil or value == "" then
		return nil
	end
	return value
end

local FIELDS = {
	"partition", "account", "default_account", "user_id", "num_tasks", "cpus_per_task", "min_cpus",
	"min_nodes", "ntasks_per_node", "time_limit", "shared", "tres_per_node", "tres_per_job",
	"tres_per_task", "min_mem_per_node", "min_mem_per_cpu", "qos", "default_qos", "array_inx",
}

-- Asks the gateway; returns (true, per_task, total) to accept, (false, message) to reject, or
-- (nil, message) when the gateway could not answer.
local function check(job_desc, fallback, skip_job)
	local fields = {}
	for _, name in ipairs(FIELDS) do
		local value = job_desc[name]
		if value == nil and fallback ~= nil then
			value = fallback[name]
		end
		fields[#fields + 1] = { name, value }
	end
	local account = given(job_desc.account) or (fallback and given(fallback.account))
		or given(job_desc.default_account)
	fields[#fields + 1] = { "pending", string.format("%.4f", pending_exposure(account, skip_job)) }
	local code, body = request("bank_submit", fields, SYNC)
	if code == nil then
		return nil, body
	end
	if code == 200 then
		local per_task, total = string.match(body, "^accept ([%d%.]+) ([%d%.]+)")
		if per_task then
			return true, per_task, tonumber(total), account
		end
		return nil, "slurmlink: unreadable answer from the gateway: " .. string.sub(body, 1, 80)
	end
	if code == 402 or code == 400 or code == 404 then
		return false, body
	end
	return nil, string.format("slurmlink gateway: HTTP %d: %s", code, body)
end

local function unreachable(message)
	slurm.log_error("%s [bank_submit]", message)
	if ON_UNREACHABLE == "deny" then
		slurm.log_user("slurmlink bank: cannot check this job's cost now (%s); try again shortly", message)
		return slurm.ERROR
	end
	return slurm.SUCCESS
end

function slurm_job_submit(job_desc, part_list, submit_uid)
	local ok, per_task, total, account = check(job_desc, nil, nil)
	if ok == nil then
		return unreachable(per_task)
	end
	if not ok then
		slurm.log_user("%s", per_task)
		return slurm.ESLURM_ACCOUNTING_POLICY
	end
	job_desc.admin_comment = with_estimate(job_desc.admin_comment, per_task)
	recent_accepts[#recent_accepts + 1] = {
		account = account, amount = total, per_task = per_task, time = os.time(),
	}
	return slurm.SUCCESS
end

-- A pending job's new time limit, partition or size is priced again (log_user is not available here
-- in 22.05: the reason goes to slurmctld's log).
function slurm_job_modify(job_desc, job_rec, part_list, modify_uid)
	if job_rec == nil or job_rec.job_state ~= JOB_PENDING then
		return slurm.SUCCESS
	end
	local changed = job_desc.time_limit ~= nil and job_desc.time_limit ~= slurm.NO_VAL
		or job_desc.partition ~= nil
		or (job_desc.num_tasks ~= nil and job_desc.num_tasks ~= slurm.NO_VAL)
		or (job_desc.min_nodes ~= nil and job_desc.min_nodes ~= slurm.NO_VAL)
	if not changed then
		return slurm.SUCCESS
	end
	local ok, per_task = check(job_desc, job_rec, job_rec.job_id)
	if ok == nil then
		return unreachable(per_task)
	end
	if not ok then
		slurm.log_info("slurmlink bank: refused change of job %s: %s", tostring(job_rec.job_id), per_task)
		return slurm.ESLURM_ACCOUNTING_POLICY
	end
	job_desc.admin_comment = with_estimate(job_rec.admin_comment, per_task)
	return slurm.SUCCESS
end
