// The edgegen NPU engine: a sequencer walking 16-word layer descriptors, LANES int8 MAC lanes,
// a drain that requantizes accumulators one lane per cycle (TFLite rounding, npu_requant), an
// optional 256-entry activation table, and TFLite's int8 ADD. See README.md for the formats.
module npu_core #(
    parameter LANES = 8,
    parameter LG = 3,          // log2(LANES)
    parameter ACT_AW = 12,
    parameter WGT_AW = 12,
    parameter PAR_AW = 9,
    parameter LUT_AW = 12,
    parameter TAP_AW = 10,
    parameter PROG_AW = 10
) (
    input  wire                  clk,
    input  wire                  rst,
    input  wire                  start,
    output reg                   busy,
    output reg                   done,
    output reg                   error,
    output reg  [31:0]           cycles,
    output reg  [31:0]           layers,
    output reg                   layer_done,   // one-cycle pulse as each layer retires
    // memories (registered read data, one cycle after the address)
    output reg  [PROG_AW-1:0]    prog_raddr,
    input  wire [31:0]           prog_rdata,
    output reg  [TAP_AW-1:0]     tap_raddr,
    input  wire [63:0]           tap_rdata,
    output reg  [WGT_AW-1:0]     wgt_raddr,
    input  wire [8*LANES-1:0]    wgt_rdata,
    output reg  [ACT_AW-1:0]     act_raddr,
    input  wire [8*LANES-1:0]    act_rdata,
    output reg                   act_we,
    output reg  [ACT_AW-1:0]     act_waddr,
    output reg  [8*LANES-1:0]    act_wdata,
    output reg  [PAR_AW-1:0]     par_raddr,
    input  wire [71:0]           par_rdata,
    output reg  [LUT_AW-1:0]     lut_raddr,
    input  wire [7:0]            lut_rdata
);
    localparam KIND_END = 4'd0, KIND_CONV = 4'd1, KIND_ADD = 4'd2, KIND_MUL = 4'd3;
    localparam S_IDLE = 4'd0, S_FETCH = 4'd1, S_LAYER = 4'd2, S_PIX0 = 4'd3, S_PIX1 = 4'd4, S_MAC = 4'd5,
               S_ADD = 4'd6, S_FLUSH = 4'd7;
    localparam [LG:0] L = LANES;

    reg [3:0] state;

    // ---------------------------------------------------------------- descriptor
    reg [PROG_AW-1:0] pc;
    reg [4:0]  fetch;
    reg [3:0]  kind;
    reg        dw, up, lut_en;
    reg [7:0]  stride;
    reg [LG:0] lu;                         // lanes in use: lanes above hold padding channels only
    reg [15:0] oh, ow, ih, iw, groups, cin, in_gs, out_gs, b_gs;
    reg [31:0] in_base, out_base, phase_base, par_base, lut_base, b_base;
    reg signed [31:0] col_step, row_step, m_a, m_b, m_o;
    reg signed [7:0]  zp_in, zp_out, act_min, act_max, zp_b, sh_a, sh_b, sh_o;

    // ---------------------------------------------------------------- CONV loop counters
    reg [15:0] oy, ox, py, px, og, t, ic;
    reg signed [17:0] by, bx;              // base input coordinates of the output pixel
    reg [31:0] row_pix, pix, out_row, out_pix, wptr, par_og, phase_row;
    reg [15:0] ph_cnt;
    reg [31:0] ph_start;
    reg [7:0]  gap;                        // cycles since the last group-completing MAC was issued

    wire last_ic  = dw || (ic == cin - 16'd1);
    wire last_t   = (t == ph_cnt - 16'd1);
    wire last_og  = (og == groups - 16'd1);
    wire group_end = last_ic && last_t;
    wire can_issue = !group_end || (gap >= {{(7-LG){1'b0}}, lu});

    // stage A: issued op, tap entry being read
    reg        a_v, a_first, a_last, a_dw;
    reg [15:0] a_og, a_ic;
    reg [31:0] a_pix, a_wptr, a_out, a_par;
    reg signed [17:0] a_by, a_bx;
    // stage B: ACT and WGT being read
    reg        b_v, b_first, b_last, b_in, b_dw;
    reg [LG:0] b_sel;
    reg [31:0] b_out, b_par;
    // stage C: products
    reg        c_v, c_first, c_last;
    reg [31:0] c_out, c_par;
    reg signed [17:0] c_prod [0:LANES-1];
    reg signed [31:0] acc [0:LANES-1];

    wire signed [7:0]  tap_dy = tap_rdata[63:56];
    wire signed [7:0]  tap_dx = tap_rdata[55:48];
    wire signed [31:0] tap_off = tap_rdata[31:0];
    wire signed [17:0] iy = a_by + tap_dy;
    wire signed [17:0] ix = a_bx + tap_dx;
    wire y_out = (iy < 0) || (iy >= $signed({2'b00, ih}));
    wire x_out = (ix < 0) || (ix >= $signed({2'b00, iw}));
    wire in_bounds = edge_en || (!y_out && !x_out);
    // edge mode: a tap one pixel outside reads the border pixel (|dy|, |dx| <= 1): undo its step
    wire [31:0] edge_fix = ((edge_en && y_out) ? (tap_dy[7] ? row_step : -row_step) : 32'd0)
                         + ((edge_en && x_out) ? (tap_dx[7] ? col_step : -col_step) : 32'd0);
    wire [31:0] a_addr = a_pix + tap_off + edge_fix + (a_dw ? {16'd0, a_og} : ({16'd0, a_ic} >> LG));

    // ---------------------------------------------------------------- drain: accumulators -> requantizer
    reg signed [31:0] hold [0:LANES-1];
    reg [LG:0]  hold_cnt;                  // lanes still to issue
    reg [31:0]  hold_out, hold_par;
    reg         r0_v, r0_last;
    reg [LG:0]  r0_lane;
    reg [31:0]  r0_out;
    reg signed [31:0] r0_x;
    wire [LG:0] drain_lane = lu - hold_cnt;

    // ---------------------------------------------------------------- ADD
    localparam A_READ_A = 3'd0, A_READ_B = 3'd1, A_LATCH = 3'd2, A_ISSUE_A = 3'd3, A_ISSUE_B = 3'd4,
               A_WAIT = 3'd5, A_ISSUE_O = 3'd6;
    reg        sub;                        // ADD: a - b
    reg        edge_en;                     // CONV: taps outside the input read its border (bilinear resize)
    reg        even;                        // requantizer rounds half to even (bilinear resize)
    wire signed [9:0] lane_a = $signed({word_a[8*add_lane+7], word_a[8*add_lane +: 8]}) - zp_in;
    wire signed [9:0] lane_b = $signed({word_b[8*add_lane+7], word_b[8*add_lane +: 8]}) - zp_b;
    reg [2:0]  add_st;
    reg [31:0] a_row, b_row, o_row;
    reg [15:0] add_g;
    reg [LG:0] add_lane;
    reg [3:0]  add_wait;
    reg [8*LANES-1:0] word_a, word_b;
    reg signed [31:0] ra [0:LANES-1];
    reg signed [31:0] rb [0:LANES-1];

    // ---------------------------------------------------------------- requantizer and post stage
    // tag: {dest(2): 0 out 1 ra 2 rb, last(1), lane(LG+1), out address(ACT_AW)}
    localparam TW = 2 + 1 + LG + 1 + ACT_AW;
    reg               rq_v;
    reg signed [31:0] rq_x, rq_m;
    reg signed [7:0]  rq_sh;
    reg [TW-1:0]      rq_tag;
    wire              rq_ov;
    wire signed [31:0] rq_y;
    wire [TW-1:0]     rq_otag;
    wire              rq_busy;
    npu_requant #(.TW(TW)) requant (.clk(clk), .rst(rst), .in_valid(rq_v), .even(even), .x(rq_x), .m(rq_m), .sh(rq_sh),
        .in_tag(rq_tag), .out_valid(rq_ov), .y(rq_y), .out_tag(rq_otag), .busy(rq_busy));

    wire [1:0]  o_dest = rq_otag[TW-1:TW-2];
    wire [LG:0] o_lane = rq_otag[LG+ACT_AW:ACT_AW];
    wire signed [31:0] o_z = rq_y + zp_out;
    wire signed [31:0] o_c = (o_z < act_min) ? act_min : ((o_z > act_max) ? act_max : o_z);
    reg         p_v, p_last;
    reg [LG:0]  p_lane;
    reg [ACT_AW-1:0] p_addr;
    reg [7:0]   p_byte;
    reg [8*LANES-1:0] pack;
    wire [7:0]  p_result = lut_en ? lut_rdata : p_byte;

    wire pipe_busy = a_v | b_v | c_v | (hold_cnt != 0) | r0_v | rq_v | rq_busy | p_v;

    // per-lane product (x - zero point) * w, zero for taps outside the input
    function signed [17:0] lane_prod(input [7:0] x, input [7:0] w, input signed [7:0] zp, input en);
        reg signed [9:0] d;
        begin
            d = $signed({x[7], x[7], x}) - $signed({zp[7], zp[7], zp});
            lane_prod = en ? d * $signed(w) : 18'sd0;
        end
    endfunction

    // read addresses: presented combinationally, data registered by the RAM for the next cycle
    always @* begin
        prog_raddr = pc + {{(PROG_AW-4){1'b0}}, fetch[3:0]};
        tap_raddr = (state == S_PIX0) ? (phase_base[TAP_AW-1:0] + phase_row[TAP_AW-1:0] + px[TAP_AW-1:0])
                                      : (ph_start[TAP_AW-1:0] + t[TAP_AW-1:0]);
        wgt_raddr = a_wptr[WGT_AW-1:0];
        act_raddr = (state != S_ADD) ? a_addr[ACT_AW-1:0]
                  : (add_st == A_READ_A) ? (a_row[ACT_AW-1:0] + add_g[ACT_AW-1:0])
                  : (b_row[ACT_AW-1:0] + add_g[ACT_AW-1:0]);
        par_raddr = hold_par[PAR_AW-1:0] + drain_lane;
        lut_raddr = lut_base[LUT_AW-1:0] + {{(LUT_AW-8){1'b0}}, ~o_c[7], o_c[6:0]};
    end

    integer l;

    always @(posedge clk) begin
        // defaults
        act_we <= 1'b0;
        rq_v <= 1'b0;
        a_v <= 1'b0;
        layer_done <= 1'b0;
        if (rst) begin
            state <= S_IDLE; busy <= 1'b0; done <= 1'b0; error <= 1'b0; cycles <= 32'd0; layers <= 32'd0;
            a_v <= 1'b0; b_v <= 1'b0; c_v <= 1'b0; hold_cnt <= 0; r0_v <= 1'b0; p_v <= 1'b0;
        end else begin
            if (busy) cycles <= cycles + 32'd1;
            if (gap != 8'hff) gap <= gap + 8'd1;

            // ---------------- sequencer
            case (state)
            S_IDLE: if (start) begin
                busy <= 1'b1; done <= 1'b0; error <= 1'b0; cycles <= 32'd0; layers <= 32'd0;
                pc <= 0; fetch <= 5'd0; state <= S_FETCH;
            end
            S_FETCH: begin
                fetch <= fetch + 5'd1;
                if (fetch != 5'd0) begin
                    case (fetch - 5'd1)
                    5'd0: begin kind <= prog_rdata[3:0]; dw <= prog_rdata[4]; up <= prog_rdata[5];
                                lut_en <= prog_rdata[6]; sub <= prog_rdata[7]; stride <= prog_rdata[15:8];
                                edge_en <= prog_rdata[24]; even <= prog_rdata[25];
                                lu <= (prog_rdata[23:16] == 8'd0 || prog_rdata[23:16] > L) ? L : prog_rdata[LG+16:16]; end
                    5'd1: begin oh <= prog_rdata[15:0]; ow <= prog_rdata[31:16]; end
                    5'd2: begin ih <= prog_rdata[15:0]; iw <= prog_rdata[31:16]; end
                    5'd3: begin groups <= prog_rdata[15:0]; cin <= prog_rdata[31:16]; end
                    5'd4: in_base <= prog_rdata;
                    5'd5: begin in_gs <= prog_rdata[15:0]; out_gs <= prog_rdata[31:16]; end
                    5'd6: out_base <= prog_rdata;
                    5'd7: begin phase_base <= prog_rdata; sh_a <= prog_rdata[7:0]; sh_b <= prog_rdata[15:8];
                                sh_o <= prog_rdata[23:16]; end
                    5'd8: par_base <= prog_rdata;
                    5'd9: lut_base <= prog_rdata;
                    5'd10: begin zp_in <= prog_rdata[7:0]; zp_out <= prog_rdata[15:8];
                                 act_min <= prog_rdata[23:16]; act_max <= prog_rdata[31:24]; end
                    5'd11: begin col_step <= prog_rdata; b_base <= prog_rdata; end
                    5'd12: begin row_step <= prog_rdata; b_gs <= prog_rdata[15:0]; zp_b <= prog_rdata[23:16]; end
                    5'd13: m_a <= prog_rdata;
                    5'd14: m_b <= prog_rdata;
                    5'd15: begin m_o <= prog_rdata; state <= S_LAYER; end
                    default: ;
                    endcase
                end
            end
            S_LAYER: begin
                oy <= 0; ox <= 0; py <= 0; px <= 0; by <= 0; bx <= 0; phase_row <= 0;
                row_pix <= in_base; pix <= in_base; out_row <= out_base; out_pix <= out_base;
                add_g <= 0; add_st <= A_READ_A; a_row <= in_base; b_row <= b_base; o_row <= out_base;
                gap <= 8'hff;
                if (kind == KIND_CONV) state <= S_PIX0;
                else if (kind == KIND_ADD || kind == KIND_MUL) state <= S_ADD;
                else if (kind == KIND_END) begin state <= S_IDLE; busy <= 1'b0; done <= 1'b1; end
                else begin state <= S_IDLE; busy <= 1'b0; done <= 1'b1; error <= 1'b1; end
            end
            S_PIX0: begin  // the phase entry of this output pixel is being read
                state <= S_PIX1;
            end
            S_PIX1: begin  // the phase entry arrives: tap_start, tap_count, weight base
                ph_start <= {16'd0, tap_rdata[63:48]};
                ph_cnt <= tap_rdata[47:32];
                wptr <= tap_rdata[31:0];
                og <= 0; t <= 0; ic <= 0; par_og <= par_base;
                state <= S_MAC;
            end
            S_MAC: if (can_issue) begin
                // issue one MAC cycle: the tap entry for (t) is already being read
                a_v <= 1'b1; a_first <= (t == 0) && (ic == 0); a_last <= group_end; a_dw <= dw;
                a_og <= og; a_ic <= ic; a_pix <= pix; a_wptr <= wptr; a_by <= by; a_bx <= bx;
                a_out <= out_pix + og; a_par <= par_og;
                if (group_end) gap <= 8'd1;
                wptr <= wptr + 32'd1;
                // advance ic -> t -> og -> pixel
                if (!last_ic) begin
                    ic <= ic + 16'd1;
                end else if (!last_t) begin
                    ic <= 0; t <= t + 16'd1;
                end else if (!last_og) begin
                    ic <= 0; t <= 0; og <= og + 16'd1; par_og <= par_og + L;
                end else begin
                    // next output pixel
                    out_pix <= out_pix + out_gs;
                    if (ox != ow - 16'd1) begin
                        ox <= ox + 16'd1;
                        if (!up) begin bx <= bx + stride; pix <= pix + col_step; end
                        else if (px == stride - 1) begin px <= 0; bx <= bx + 18'sd1; pix <= pix + col_step; end
                        else px <= px + 16'd1;
                        state <= S_PIX0;
                    end else begin
                        ox <= 0; px <= 0; bx <= 0;
                        if (oy == oh - 16'd1) state <= S_FLUSH;
                        else begin
                            oy <= oy + 16'd1;
                            state <= S_PIX0;
                            if (!up) begin by <= by + stride; row_pix <= row_pix + row_step; pix <= row_pix + row_step; end
                            else if (py == stride - 1) begin
                                py <= 0; phase_row <= 0; by <= by + 18'sd1;
                                row_pix <= row_pix + row_step; pix <= row_pix + row_step;
                            end else begin
                                py <= py + 16'd1; phase_row <= phase_row + stride; pix <= row_pix;
                            end
                        end
                    end
                end
            end
            S_ADD: begin
                case (add_st)
                A_READ_A: add_st <= A_READ_B;
                A_READ_B: begin word_a <= act_rdata; add_st <= A_LATCH; end
                A_LATCH: begin word_b <= act_rdata; add_st <= (kind == KIND_MUL) ? A_ISSUE_O : A_ISSUE_A;
                               add_lane <= 0; end
                A_ISSUE_A: begin
                    rq_v <= 1'b1;
                    rq_x <= lane_a <<< 20;
                    rq_m <= m_a; rq_sh <= sh_a;
                    rq_tag <= {2'd1, 1'b0, add_lane, {ACT_AW{1'b0}}};
                    add_lane <= add_lane + 1'b1;
                    if (add_lane == lu - 1) begin add_lane <= 0; add_st <= A_ISSUE_B; end
                end
                A_ISSUE_B: begin
                    rq_v <= 1'b1;
                    rq_x <= lane_b <<< 20;
                    rq_m <= m_b; rq_sh <= sh_b;
                    rq_tag <= {2'd2, 1'b0, add_lane, {ACT_AW{1'b0}}};
                    add_lane <= add_lane + 1'b1;
                    if (add_lane == lu - 1) begin add_lane <= 0; add_st <= A_WAIT; add_wait <= 4'd4; end
                end
                A_WAIT: begin
                    add_wait <= add_wait - 4'd1;
                    if (add_wait == 0) add_st <= A_ISSUE_O;
                end
                A_ISSUE_O: begin
                    rq_v <= 1'b1;
                    rq_x <= (kind == KIND_MUL) ? lane_a * lane_b
                          : (sub ? ra[add_lane] - rb[add_lane] : ra[add_lane] + rb[add_lane]);
                    rq_m <= m_o; rq_sh <= sh_o;
                    rq_tag <= {2'd0, add_lane == lu - 1, add_lane, o_row[ACT_AW-1:0] + add_g[ACT_AW-1:0]};
                    add_lane <= add_lane + 1'b1;
                    if (add_lane == lu - 1) begin
                        add_lane <= 0;
                        add_st <= A_READ_A;
                        if (add_g != groups - 16'd1) add_g <= add_g + 16'd1;
                        else begin
                            add_g <= 0;
                            a_row <= a_row + in_gs; b_row <= b_row + b_gs; o_row <= o_row + out_gs;
                            if (ox != ow - 16'd1) ox <= ox + 16'd1;
                            else begin
                                ox <= 0;
                                if (oy == oh - 16'd1) state <= S_FLUSH;
                                else oy <= oy + 16'd1;
                            end
                        end
                    end
                end
                default: add_st <= A_READ_A;
                endcase
            end
            S_FLUSH: if (!pipe_busy) begin
                layers <= layers + 32'd1;
                layer_done <= 1'b1;
                pc <= pc + 16; fetch <= 5'd0; state <= S_FETCH;
            end
            default: state <= S_IDLE;
            endcase

            // ---------------- MAC pipeline (CONV)
            b_v <= a_v && state != S_ADD;
            if (a_v) begin
                b_first <= a_first; b_last <= a_last; b_in <= in_bounds; b_dw <= a_dw;
                b_sel <= a_ic[LG:0] & (L - 1); b_out <= a_out; b_par <= a_par;
            end
            c_v <= b_v;
            if (b_v) begin
                c_first <= b_first; c_last <= b_last; c_out <= b_out; c_par <= b_par;
                for (l = 0; l < LANES; l = l + 1)
                    c_prod[l] <= lane_prod(b_dw ? act_rdata[8*l +: 8] : act_rdata[8*b_sel +: 8],
                                           wgt_rdata[8*l +: 8], zp_in, b_in);
            end
            // ---------------- drain: one lane per cycle into the requantizer (bias, multiplier, shift from PAR)
            r0_v <= 1'b0;
            if (hold_cnt != 0) begin
                r0_v <= 1'b1; r0_x <= hold[drain_lane]; r0_lane <= drain_lane;
                r0_last <= (hold_cnt == 1); r0_out <= hold_out;
                hold_cnt <= hold_cnt - 1'b1;
            end
            if (c_v) begin
                for (l = 0; l < LANES; l = l + 1)
                    acc[l] <= (c_first ? 32'sd0 : acc[l]) + c_prod[l];
                if (c_last) begin
                    if (hold_cnt > 1) error <= 1'b1;  // the drain would lose a group: never happens by construction
                    for (l = 0; l < LANES; l = l + 1)
                        hold[l] <= (c_first ? 32'sd0 : acc[l]) + c_prod[l];
                    hold_cnt <= lu; hold_out <= c_out; hold_par <= c_par;
                end
            end

            if (r0_v) begin
                rq_v <= 1'b1;
                rq_x <= r0_x + $signed(par_rdata[31:0]);
                rq_m <= par_rdata[63:32];
                rq_sh <= par_rdata[71:64];
                rq_tag <= {2'd0, r0_last, r0_lane, r0_out[ACT_AW-1:0]};
            end

            // ---------------- results: ADD operands, or output bytes through the table into ACT words
            p_v <= 1'b0;
            if (rq_ov) begin
                if (o_dest == 2'd1) ra[o_lane] <= rq_y;
                else if (o_dest == 2'd2) rb[o_lane] <= rq_y;
                else begin
                    p_v <= 1'b1; p_lane <= o_lane; p_last <= rq_otag[TW-3]; p_addr <= rq_otag[ACT_AW-1:0];
                    p_byte <= o_c[7:0];
                end
            end
            if (p_v) begin
                pack[8*p_lane +: 8] <= p_result;
                if (p_last) begin
                    act_we <= 1'b1; act_waddr <= p_addr;
                    act_wdata <= pack;
                    act_wdata[8*p_lane +: 8] <= p_result;
                end
            end
        end
    end
endmodule
